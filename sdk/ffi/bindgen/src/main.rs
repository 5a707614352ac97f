//! `uniffi-bindgen generate --library <libward_ffi.so> --language python|kotlin|swift --out-dir DIR`
#![forbid(unsafe_code)]

fn main() {
    uniffi::uniffi_bindgen_main()
}
