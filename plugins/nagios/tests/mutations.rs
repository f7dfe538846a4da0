//! Randomly damaged pages and answers never panic the parsers (no unwrap, no slicing
//! out of bounds on any input).

const PAGES: [&[u8]; 3] = [
    include_bytes!("fixtures/nagios4/status-host-all.html"),
    include_bytes!("fixtures/vitrage/nagios-mock.html"),
    include_bytes!("fixtures/nagios4-live/status-host-all.html"),
];
const JSONS: [&[u8]; 3] = [
    include_bytes!("fixtures/nagios4/statusjson-servicelist.json"),
    include_bytes!("fixtures/nagios4/statusjson-hostlist.json"),
    include_bytes!("fixtures/nagios4-live/statusjson-servicelist.json"),
];

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const NASTY: &[u8] = b"<>/'\"&;#!- =\n\xff\xc3{}[]:,0\\";

fn mutate(rng: &mut Rng, page: &[u8]) -> Vec<u8> {
    let mut out = page.to_vec();
    for _ in 0..1 + rng.below(4) {
        if out.is_empty() {
            break;
        }
        let at = rng.below(out.len());
        match rng.below(4) {
            0 => {
                out.remove(at);
            }
            1 => out.insert(at, NASTY[rng.below(NASTY.len())]),
            2 => out[at] = NASTY[rng.below(NASTY.len())],
            _ => {
                let len = rng.below(64).min(out.len() - at);
                out.drain(at..at + len);
            }
        }
    }
    out
}

/// 600 per test; `NAGIOS_MUTATIONS=<n>` for a longer run.
fn iterations() -> usize {
    std::env::var("NAGIOS_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600)
}

#[test]
fn damaged_html_never_panics() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for i in 0..iterations() {
        let page = PAGES[i % PAGES.len()];
        let damaged = mutate(&mut rng, page);
        let _ = synchronizer_nagios::parse_status_page(&damaged);
    }
}

#[test]
fn damaged_json_never_panics() {
    let mut rng = Rng(0xd1b5_4a32_d192_ed03);
    for i in 0..iterations() {
        let body = JSONS[i % JSONS.len()];
        let damaged = mutate(&mut rng, body);
        let _ = synchronizer_nagios::parse_servicelist(&damaged);
        let _ = synchronizer_nagios::parse_hostlist(&damaged);
    }
}
