#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| synchronizer_fuzz::targets::prometheus_webhook(data));
