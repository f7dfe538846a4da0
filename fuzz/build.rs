//! Every plugin crate exports the same `#[no_mangle]` library header (`export_plugin!`,
//! what the host's loader looks for in a `.so`). These programs link several plugins'
//! rlibs at once and never load them as libraries: the first header wins, the others
//! are ignored, instead of failing the link.
fn main() {
    println!("cargo:rustc-link-arg=-Wl,--allow-multiple-definition");
}
