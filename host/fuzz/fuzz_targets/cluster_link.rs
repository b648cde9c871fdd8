#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| skyhost::fuzzing::cluster_link(data));
