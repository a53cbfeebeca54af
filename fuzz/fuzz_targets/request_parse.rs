//! Request parsing and line framing on arbitrary bytes. See `gmq_fuzz::protocol`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gmq_fuzz::protocol::request_parse(data));
