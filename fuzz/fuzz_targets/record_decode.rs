//! Record, checkpoint, index and segment-header decoding on arbitrary bytes.
//! See `gmq_fuzz::record_decode`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gmq_fuzz::record_decode(data));
