//! Lays out the optimised `eirinix` binary with the functions its server runs first.
//!
//! `hot-symbols.txt` (written by `scripts/hot-symbols.sh`) lists every function `eirinix run`
//! executed while starting, idling and answering admission load. lld places them together at
//! the front of `.text`: the kernel maps code in 64 KiB windows around each executed address,
//! so scattered hot functions keep most of the binary resident (BENCHMARKS.md §4).

fn main() {
    let Ok(dir) = std::env::var("CARGO_MANIFEST_DIR") else {
        return;
    };
    let list = std::path::Path::new(&dir).join("hot-symbols.txt");
    println!("cargo::rerun-if-changed={}", list.display());
    // Only optimised builds (the names are those of the dist profile) and only where the linker
    // is lld (rustc's default for x86_64-unknown-linux-gnu since 1.90).
    let optimised = std::env::var("OPT_LEVEL").is_ok_and(|o| o != "0");
    let lld_target = std::env::var("TARGET").is_ok_and(|t| t == "x86_64-unknown-linux-gnu");
    if optimised && lld_target && list.exists() {
        println!(
            "cargo::rustc-link-arg-bin=eirinix=-Wl,--symbol-ordering-file={}",
            list.display()
        );
        println!("cargo::rustc-link-arg-bin=eirinix=-Wl,--no-warn-symbol-ordering");
    }
}
