//! Group state log replay on arbitrary bytes. See `gmq_fuzz::group_state`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gmq_fuzz::group_state(data));
