//! Packs a root filesystem directory into an OCI image archive (what `scripts/build-image.sh`
//! uses; `ctr images import`, `podman load` and `skopeo copy oci-archive:` read the result).
//!
//! ```text
//! cargo run -p eirinix-testenv --example oci-image -- --rootfs DIR --name NAME --out FILE \
//!     [--entrypoint PATH] [--user UID:GID] [--label KEY=VALUE]...
//! ```

use std::path::PathBuf;

use eirinix_testenv::ImageBuilder;

fn main() {
    if let Err(e) = run() {
        eprintln!("oci-image: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let mut rootfs = None;
    let mut name = None;
    let mut out = None;
    let mut entrypoint = None;
    let mut user = None;
    let mut labels = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--rootfs" => rootfs = Some(PathBuf::from(value()?)),
            "--name" => name = Some(value()?),
            "--out" => out = Some(PathBuf::from(value()?)),
            "--entrypoint" => entrypoint = Some(value()?),
            "--user" => user = Some(value()?),
            "--label" => {
                let kv = value()?;
                let (k, v) = kv.split_once('=').ok_or("--label takes KEY=VALUE")?;
                labels.push((k.to_owned(), v.to_owned()));
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let rootfs = rootfs.ok_or("--rootfs is required")?;
    let name = name.ok_or("--name is required")?;
    let out = out.ok_or("--out is required")?;
    let mut image = ImageBuilder::new(name)
        .tree(&rootfs)
        .map_err(|e| e.to_string())?;
    if let Some(ep) = entrypoint {
        image = image.entrypoint([ep]);
    }
    if let Some(u) = user {
        image = image.user(&u);
    }
    for (k, v) in labels {
        image = image.label(&k, &v);
    }
    let archive = image.write_archive(&out).map_err(|e| e.to_string())?;
    println!(
        "{} {} {}",
        archive.path.display(),
        archive.name,
        archive.digest
    );
    Ok(())
}
