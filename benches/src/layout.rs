//! Where the server's code is in the `eirinix` binary and how much of it is resident: a check
//! that `eirinix-cli/hot-symbols.txt` still names the build's functions, that the linker put them
//! together at the front of `.text`, and, for a running server, its resident pages per section
//! (the kernel maps code in windows around each executed address, so scattered hot functions
//! keep most of `.text` resident).

use std::collections::HashSet;
use std::path::Path;

use anyhow::Context as _;
use object::{Object, ObjectSection, ObjectSymbol};

/// The list `eirinix-cli/build.rs` hands to the linker.
const HOT_SYMBOLS: &str = include_str!("../../eirinix-cli/hot-symbols.txt");

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Two lines on `bin`, read once: where its hot functions are, and what of it process `pid`
/// has resident (each says why when it cannot be told).
pub struct Layout {
    /// The hot functions' layout.
    pub hot: String,
    /// The resident pages per section.
    pub resident: String,
}

impl Layout {
    fn unread(e: &anyhow::Error) -> Self {
        let why = format!("layout not read: {e:#}");
        Self {
            hot: why.clone(),
            resident: why,
        }
    }
}

/// Read `bin` and the resident pages of process `pid` running it.
pub fn read(pid: u32, bin: &Path) -> Layout {
    let data = match std::fs::read(bin).with_context(|| format!("reading {}", bin.display())) {
        Ok(data) => data,
        Err(e) => return Layout::unread(&e),
    };
    let file = match object::File::parse(&*data).context("parsing the binary") {
        Ok(file) => file,
        Err(e) => return Layout::unread(&e),
    };
    Layout {
        hot: describe(&file).unwrap_or_else(|e| format!("layout not read: {e:#}")),
        resident: resident(&file, pid, bin)
            .unwrap_or_else(|e| format!("resident pages not read: {e:#}")),
    }
}

fn describe(file: &object::File) -> anyhow::Result<String> {
    let text = file.section_by_name(".text").context("no .text section")?;
    let start = text.address();
    let wanted: HashSet<&str> = HOT_SYMBOLS.lines().collect();
    let (mut found, mut bytes, mut end) = (0usize, 0u64, start);
    for sym in file.symbols() {
        let Ok(name) = sym.name() else { continue };
        if sym.size() > 0 && wanted.contains(name) {
            found += 1;
            bytes += sym.size();
            end = end.max(sym.address() + sym.size());
        }
    }
    Ok(format!(
        "hot functions (eirinix-cli/hot-symbols.txt): {found} of {} found in the binary, {:.1} MiB \
         of code, the last ending {:.1} MiB into .text ({:.1} MiB)",
        wanted.len(),
        mib(bytes),
        mib(end.saturating_sub(start)),
        mib(text.size())
    ))
}

/// Resident bytes of process `pid`'s mappings of `bin`, per section, from `/proc/<pid>/pagemap`
/// (needs root to see the present bits of another process; an error otherwise).
fn resident(file: &object::File, pid: u32, bin: &Path) -> anyhow::Result<String> {
    const PAGE: u64 = 4096;
    let bin = std::fs::canonicalize(bin)?;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let pagemap = std::fs::File::open(format!("/proc/{pid}/pagemap"))?;
    // File offsets of the resident pages of every mapping of the binary.
    let mut offsets = Vec::new();
    for line in maps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || Path::new(f[5]) != bin {
            continue;
        }
        let (lo, hi) = f[0].split_once('-').context("maps range")?;
        let (lo, hi) = (u64::from_str_radix(lo, 16)?, u64::from_str_radix(hi, 16)?);
        let off = u64::from_str_radix(f[2], 16)?;
        let mut entries = vec![0u8; ((hi - lo) / PAGE * 8) as usize];
        std::os::unix::fs::FileExt::read_exact_at(&pagemap, &mut entries, lo / PAGE * 8)?;
        for (i, e) in entries.chunks_exact(8).enumerate() {
            let e = u64::from_le_bytes(e.try_into()?);
            if e >> 63 == 1 {
                offsets.push(off + i as u64 * PAGE);
            }
        }
    }
    anyhow::ensure!(
        !offsets.is_empty(),
        "no resident page of {} seen in /proc/{pid}/pagemap (not root?)",
        bin.display()
    );
    let mut parts = Vec::new();
    for name in [".text", ".rodata", ".rela.dyn", ".data.rel.ro"] {
        let Some(s) = file.section_by_name(name) else {
            continue;
        };
        let Some((at, size)) = s.file_range() else {
            continue;
        };
        let pages = offsets
            .iter()
            .filter(|&&o| o >= at && o < at + size)
            .count() as u64;
        parts.push(format!(
            "{name} {:.1} of {:.1} MiB",
            mib(pages * PAGE),
            mib(size)
        ));
    }
    Ok(format!(
        "resident pages of the binary ({:.1} MiB): {}",
        mib(offsets.len() as u64 * PAGE),
        parts.join(", ")
    ))
}
