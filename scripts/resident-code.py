#!/usr/bin/env python3
"""Which code of a running binary is resident, and why (BENCHMARKS.md §4).

    scripts/resident-code.py <pid> <binary>             # per section and per crate, folio sizes
    scripts/resident-code.py <pid> <binary> --pageout   # then drop its text pages and watch
                                                        # them come back (10 s and 40 s later)

Needs root (another process's /proc/<pid>/pagemap present bits and /proc/kpageflags) and binutils
(`readelf`, `nm`). Each resident page of the binary's mappings is attributed to the section it
lies in and, for .text, to the crates of the symbols on it (the first path segment of the
demangled name); folio sizes come from the compound-page flags of /proc/kpageflags.
"""
import collections, ctypes, os, re, struct, subprocess, sys, time

PAGE = 4096


def mappings(pid, binpath):
    for line in open(f"/proc/{pid}/maps"):
        p = line.split()
        if len(p) >= 6 and os.path.realpath(p[5]) == binpath:
            lo, hi = (int(x, 16) for x in p[0].split("-"))
            yield lo, hi, int(p[2], 16), p[1]


def resident(pid, binpath):
    """(file offset, pfn) of every resident page of the binary's mappings."""
    pages = []
    with open(f"/proc/{pid}/pagemap", "rb") as pm:
        for lo, hi, off, _ in mappings(pid, binpath):
            pm.seek(lo // PAGE * 8)
            data = pm.read((hi - lo) // PAGE * 8)
            for i in range((hi - lo) // PAGE):
                (e,) = struct.unpack_from("<Q", data, i * 8)
                if e >> 63 & 1:
                    pages.append((off + i * PAGE, e & ((1 << 55) - 1)))
    return pages


def sections(binpath):
    out = subprocess.run(["readelf", "-SW", binpath], capture_output=True, text=True).stdout
    secs = []
    for m in re.finditer(r"\]\s+(\S+)\s+\S+\s+([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)", out):
        addr, off, size = (int(m.group(i), 16) for i in (2, 3, 4))
        if size and addr:
            secs.append((off, off + size, m.group(1), addr))
    return secs


def crate(name):
    n = re.sub(r"^(dyn |impl |mut |const )", "", name.lstrip("<&*"))
    m = re.match(r"([A-Za-z_][A-Za-z0-9_]*)(::|$)", n)
    return m.group(1) if m else "?"


def report(pid, binpath):
    pages = resident(pid, binpath)
    secs = sections(binpath)
    by_section = collections.Counter()
    text = next(s for s in secs if s[2] == ".text")
    text_pages = set()
    for off, _ in pages:
        name = next((s[2] for s in secs if s[0] <= off < s[1]), "?")
        by_section[name] += PAGE
        if name == ".text":
            text_pages.add((off - text[0] + text[3]) // PAGE)
    print(f"resident pages of {binpath}: {len(pages) * PAGE / 2**20:.1f} MiB")
    for name, b in by_section.most_common():
        print(f"  {name:20} {b / 2**20:6.1f} MiB")
    flags = collections.Counter()
    with open("/proc/kpageflags", "rb") as kf:
        for _, pfn in pages:
            kf.seek(pfn * 8)
            (f,) = struct.unpack("<Q", kf.read(8))
            flags["head" if f >> 15 & 1 else "tail" if f >> 16 & 1 else "single"] += 1
    if flags["head"]:
        avg = (flags["head"] + flags["tail"]) / flags["head"]
        print(f"large folios: {flags['head']} (average {avg * 4:.0f} KiB), {flags['single']} single pages")
    out = subprocess.run(["nm", "-S", "-C", "--defined-only", binpath], capture_output=True, text=True).stdout
    res, total = collections.Counter(), collections.Counter()
    for line in out.splitlines():
        p = line.split(" ", 3)
        if len(p) != 4 or p[2] not in "tTwW":
            continue
        a, size, c = int(p[0], 16), int(p[1], 16), crate(p[3])
        total[c] += size
        for page in range(a // PAGE, (a + size - 1) // PAGE + 1):
            if page in text_pages:
                res[c] += min(a + size, (page + 1) * PAGE) - max(a, page * PAGE)
    print(f".text {(text[1] - text[0]) / 2**20:.1f} MiB, resident {len(text_pages) * PAGE / 2**20:.1f} MiB; by crate, KiB resident / KiB of code:")
    for c, b in res.most_common(30):
        print(f"  {c:28} {b / 1024:8.0f} / {total[c] / 1024:8.0f}")
    return text_pages


def pageout(pid, binpath):
    """process_madvise(MADV_PAGEOUT) on the executable mappings: an experiment, not a fix."""
    libc = ctypes.CDLL(None, use_errno=True)

    class Iovec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

    pidfd = libc.syscall(434, pid, 0)  # pidfd_open
    if pidfd < 0:
        sys.exit(f"pidfd_open: errno {ctypes.get_errno()}")
    for lo, hi, _, perm in mappings(pid, binpath):
        if "x" in perm:
            v = Iovec(lo, hi - lo)
            if libc.syscall(440, pidfd, ctypes.byref(v), 1, 21, 0) < 0:  # process_madvise
                sys.exit(f"process_madvise: errno {ctypes.get_errno()}")


def text_mib(pid, binpath):
    secs = sections(binpath)
    text = next(s for s in secs if s[2] == ".text")
    n = sum(1 for off, _ in resident(pid, binpath) if text[0] <= off < text[1])
    return n * PAGE / 2**20


if __name__ == "__main__":
    pid, binpath = int(sys.argv[1]), os.path.realpath(sys.argv[2])
    report(pid, binpath)
    if "--pageout" in sys.argv[3:]:
        pageout(pid, binpath)
        print(f"after MADV_PAGEOUT: .text {text_mib(pid, binpath):.1f} MiB resident")
        for wait in (10, 30):
            time.sleep(wait)
            print(f"{wait} s later: .text {text_mib(pid, binpath):.1f} MiB resident")
