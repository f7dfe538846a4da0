//! Cost of turning one captured notification body into a change (no broker, no host).
//!
//! ```text
//! cargo bench -p synchronizer-bus --bench interpret
//! ```

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
    const N: u32 = 50_000;
    for (name, body) in BODIES {
        let bytes = body.as_bytes();
        for _ in 0..1000 {
            std::hint::black_box(interpret(bytes, Families::all()).ok());
        }
        let start = Instant::now();
        for _ in 0..N {
            std::hint::black_box(interpret(std::hint::black_box(bytes), Families::all()).ok());
        }
        let per = start.elapsed() / N;
        let start = Instant::now();
        let off = Families::of(&[synchronizer_bus::mapping::Family::Heat]);
        for _ in 0..N {
            std::hint::black_box(interpret(std::hint::black_box(bytes), off).ok());
        }
        let envelope = start.elapsed() / N;
        println!(
            "{name} ({} bytes): {per:?} per message ({envelope:?} of it reading the envelope, as for a family that is off)",
            bytes.len()
        );
    }
}
