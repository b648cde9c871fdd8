#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| skyhost::fuzzing::send_batch(data));
