//! Cost of turning one captured notification body into a change (no broker, no host).
//!
//! ```text
//! cargo bench -p synchronizer-bus --bench interpret
//! ```
//!
//! Each figure is the best of 7 rounds of 10,000 messages.

use std::time::Instant;

use synchronizer_bus::mapping::{Families, interpret};

const BODIES: [(&str, &str); 3] = [
    (
        "versioned instance.update",
        include_str!(
            "../tests/fixtures/nova-30/versioned_notifications.info__instance.update.raw.json"
        ),
    ),
    (
        "versioned instance.create.end",
        include_str!(
            "../tests/fixtures/nova-30/versioned_notifications.info__instance.create.end.raw.json"
        ),
    ),
    (
        "legacy compute.instance.create.end",
        include_str!(
            "../tests/fixtures/nova-30/vitrage_notifications.info__compute.instance.create.end.raw.json"
        ),
    ),
];

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    // The best of several rounds: on a shared machine a round can lose time to other
    // work, never gain it.
    const N: u32 = 10_000;
    const ROUNDS: usize = 7;
    let best = |f: &dyn Fn()| {
        (0..ROUNDS)
            .map(|_| {
                let start = Instant::now();
                for _ in 0..N {
                    f();
                }
                start.elapsed() / N
            })
            .min()
            .unwrap_or_default()
    };
    for (name, body) in BODIES {
        let bytes = body.as_bytes();
        for _ in 0..1000 {
            std::hint::black_box(interpret(bytes, Families::all()).ok());
        }
        let per = best(&|| {
            std::hint::black_box(interpret(std::hint::black_box(bytes), Families::all()).ok());
        });
        let off = Families::of(&[synchronizer_bus::mapping::Family::Heat]);
        let envelope = best(&|| {
            std::hint::black_box(interpret(std::hint::black_box(bytes), off).ok());
        });
        println!(
            "{name} ({} bytes): {per:?} per message ({envelope:?} of it reading the envelope, as for a family that is off)",
            bytes.len()
        );
    }
}
