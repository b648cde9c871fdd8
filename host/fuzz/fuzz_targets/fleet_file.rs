#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| skyhost_cli::fleet::fuzz_fleet_file(data));
