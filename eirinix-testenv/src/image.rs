//! [`ImageBuilder`]: OCI images built from files on this machine, without a registry or a
//! Docker engine, for loading into the real node of a [`Cluster`](crate::Cluster).
//!
//! An image is one uncompressed layer (a deterministic tar: sorted entries, mtime 0, explicit
//! owners and modes) plus an OCI config, written as an OCI image-layout archive that
//! `ctr images import` (and `podman load`, `skopeo copy oci-archive:`) reads.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// One entry of the image's root filesystem.
#[derive(Debug, Clone)]
enum Entry {
    Dir {
        mode: u32,
        uid: u64,
        gid: u64,
    },
    File {
        data: Source,
        mode: u32,
        uid: u64,
        gid: u64,
    },
    Symlink {
        target: String,
    },
}

/// Where a file's bytes come from (shared: clones of a builder copy no file contents).
#[derive(Debug, Clone)]
enum Source {
    Bytes(std::sync::Arc<[u8]>),
    Host(PathBuf),
}

/// Builds a single-layer OCI image from host files, bytes, directories and symlinks.
///
/// Names must carry a registry host with a dot (`eirinix.local/app:1`) so that the container
/// runtime does not rewrite them to `docker.io/...`; pods then use them with
/// `imagePullPolicy: IfNotPresent` (or `Never`).
#[derive(Debug, Clone)]
pub struct ImageBuilder {
    name: String,
    entries: BTreeMap<String, Entry>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    env: Vec<String>,
    user: Option<String>,
    workdir: Option<String>,
    labels: BTreeMap<String, String>,
}

/// A written image archive: where it is and what it is called.
#[derive(Debug, Clone)]
pub struct ImageArchive {
    /// The archive file (an OCI image layout in a tar).
    pub path: PathBuf,
    /// The full image name, e.g. `eirinix.local/app:1`.
    pub name: String,
    /// Digest of the image manifest (`sha256:...`).
    pub digest: String,
}

impl ImageArchive {
    /// Describes an existing archive (e.g. from `scripts/build-image.sh`): reads the image name
    /// and manifest digest from its `index.json`.
    pub fn read(path: &Path) -> Result<ImageArchive> {
        let file = std::fs::File::open(path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        let mut archive = tar::Archive::new(file);
        let entries = archive
            .entries()
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        for entry in entries {
            let mut entry =
                entry.map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            let is_index = entry
                .path()
                .map(|p| p.as_os_str() == "index.json")
                .unwrap_or(false);
            if !is_index {
                continue;
            }
            let index: serde_json::Value =
                serde_json::from_reader(&mut entry).map_err(json_error)?;
            let manifest = &index["manifests"][0];
            let name = manifest["annotations"]["io.containerd.image.name"]
                .as_str()
                .ok_or_else(|| {
                    Error::io(
                        format!("reading {}", path.display()),
                        std::io::Error::other(
                            "index.json names no image (io.containerd.image.name)",
                        ),
                    )
                })?;
            return Ok(ImageArchive {
                path: path.to_owned(),
                name: name.to_owned(),
                digest: manifest["digest"].as_str().unwrap_or_default().to_owned(),
            });
        }
        Err(Error::io(
            format!("reading {}", path.display()),
            std::io::Error::other("not an OCI image archive (no index.json)"),
        ))
    }
}

impl ImageBuilder {
    /// A new, empty image called `name` (e.g. `eirinix.local/app:1`).
    pub fn new(name: impl Into<String>) -> Self {
        ImageBuilder {
            name: name.into(),
            entries: BTreeMap::new(),
            entrypoint: None,
            cmd: None,
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            user: None,
            workdir: None,
            labels: BTreeMap::new(),
        }
    }

    /// The same image under another name (e.g. a second tag of an app image).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The image name given to [`new`](Self::new).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds a directory (parents are added as `0755 root:root` when missing).
    pub fn dir(mut self, path: &str, mode: u32, uid: u64, gid: u64) -> Self {
        let key = normalize(path);
        self.add_parents(&key);
        self.entries.insert(key, Entry::Dir { mode, uid, gid });
        self
    }

    /// Adds a file with the given contents, owned by root.
    pub fn contents(self, path: &str, data: impl Into<Vec<u8>>, mode: u32) -> Self {
        self.contents_owned(path, data, mode, 0, 0)
    }

    /// Adds a file with the given contents and owner.
    pub fn contents_owned(
        mut self,
        path: &str,
        data: impl Into<Vec<u8>>,
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> Self {
        let key = normalize(path);
        self.add_parents(&key);
        let data = Source::Bytes(data.into().into());
        self.entries.insert(
            key,
            Entry::File {
                data,
                mode,
                uid,
                gid,
            },
        );
        self
    }

    /// Adds a copy of the host file `host` (read when the archive is written), owned by root.
    pub fn file(mut self, path: &str, host: impl Into<PathBuf>, mode: u32) -> Self {
        let key = normalize(path);
        self.add_parents(&key);
        let data = Source::Host(host.into());
        self.entries.insert(
            key,
            Entry::File {
                data,
                mode,
                uid: 0,
                gid: 0,
            },
        );
        self
    }

    /// Adds a symbolic link at `path` pointing to `target`.
    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let key = normalize(path);
        self.add_parents(&key);
        self.entries.insert(
            key,
            Entry::Symlink {
                target: target.into(),
            },
        );
        self
    }

    /// Adds every file, directory and symlink under the host directory `root` at the same
    /// paths in the image, keeping modes and owners (what a `COPY root/ /` does). File contents
    /// are read now.
    pub fn tree(mut self, root: &Path) -> Result<Self> {
        use std::os::unix::fs::MetadataExt as _;
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
            let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<std::io::Result<_>>()?;
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let path = e.path();
                out.push(path.clone());
                if e.file_type()?.is_dir() {
                    walk(&path, out)?;
                }
            }
            Ok(())
        }
        let mut paths = Vec::new();
        walk(root, &mut paths).map_err(|e| Error::io(format!("reading {}", root.display()), e))?;
        for path in paths {
            let rel = path
                .strip_prefix(root)
                .map_err(|e| Error::io("walking the image tree", std::io::Error::other(e)))?;
            let key = normalize(&rel.to_string_lossy());
            let meta = std::fs::symlink_metadata(&path)
                .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            let (mode, uid, gid) = (
                meta.mode() & 0o7777,
                u64::from(meta.uid()),
                u64::from(meta.gid()),
            );
            let entry = if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path)
                    .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
                Entry::Symlink {
                    target: target.to_string_lossy().into_owned(),
                }
            } else if meta.is_dir() {
                Entry::Dir { mode, uid, gid }
            } else {
                // Read now: the tree may be rebuilt before the archive is written.
                let bytes = std::fs::read(&path)
                    .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
                Entry::File {
                    data: Source::Bytes(bytes.into()),
                    mode,
                    uid,
                    gid,
                }
            };
            self.add_parents(&key);
            self.entries.insert(key, entry);
        }
        Ok(self)
    }

    /// Sets the image's ENTRYPOINT.
    pub fn entrypoint<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.entrypoint = Some(args.into_iter().map(Into::into).collect());
        self
    }

    /// Sets the image's CMD (arguments to the entrypoint, or the command without one).
    pub fn cmd<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.cmd = Some(args.into_iter().map(Into::into).collect());
        self
    }

    /// Adds an environment variable to the image config.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.retain(|e| e.split('=').next() != Some(name));
        self.env.push(format!("{name}={value}"));
        self
    }

    /// Sets the user the image runs as (`uid`, `uid:gid` or a name from its `/etc/passwd`).
    pub fn user(mut self, user: &str) -> Self {
        self.user = Some(user.into());
        self
    }

    /// Sets the working directory.
    pub fn workdir(mut self, dir: &str) -> Self {
        self.workdir = Some(dir.into());
        self
    }

    /// Adds an image label (e.g. `org.opencontainers.image.version`).
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// The paths in the image's root filesystem, sorted, with `/` after directories: what the
    /// image contains, for comparing two ways of building it.
    pub fn listing(&self) -> Vec<String> {
        self.entries
            .iter()
            .map(|(path, e)| match e {
                Entry::Dir { .. } => format!("/{path}/"),
                _ => format!("/{path}"),
            })
            .collect()
    }

    fn add_parents(&mut self, key: &str) {
        let mut parent = Path::new(key).parent();
        while let Some(p) = parent {
            let s = p.to_string_lossy();
            if s.is_empty() {
                break;
            }
            self.entries.entry(s.into_owned()).or_insert(Entry::Dir {
                mode: 0o755,
                uid: 0,
                gid: 0,
            });
            parent = p.parent();
        }
    }

    /// Writes the image as an OCI image-layout archive to `out` and returns its description.
    pub fn write_archive(&self, out: &Path) -> Result<ImageArchive> {
        let layer = self.layer_tar()?;
        let layer_digest = sha256(&layer);
        let mut config = json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": self.env},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
            "history": [{"created_by": "eirinix-testenv ImageBuilder"}],
        });
        if let Some(c) = config["config"].as_object_mut() {
            if let Some(ep) = &self.entrypoint {
                c.insert("Entrypoint".into(), json!(ep));
            }
            if let Some(cmd) = &self.cmd {
                c.insert("Cmd".into(), json!(cmd));
            }
            if let Some(user) = &self.user {
                c.insert("User".into(), json!(user));
            }
            if let Some(dir) = &self.workdir {
                c.insert("WorkingDir".into(), json!(dir));
            }
            if !self.labels.is_empty() {
                c.insert("Labels".into(), json!(self.labels));
            }
        }
        let config = serde_json::to_vec(&config).map_err(json_error)?;
        let config_digest = sha256(&config);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer_digest,
                "size": layer.len(),
            }],
        }))
        .map_err(json_error)?;
        let manifest_digest = sha256(&manifest);
        let tag = self.name.rsplit_once(':').map_or("latest", |(_, t)| t);
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest.len(),
                "annotations": {
                    "io.containerd.image.name": self.name,
                    "org.opencontainers.image.ref.name": tag,
                },
            }],
        }))
        .map_err(json_error)?;

        let mut archive = tar::Builder::new(Vec::new());
        let mut put = |path: &str, data: &[u8]| -> std::io::Result<()> {
            let mut h = header(tar::EntryType::Regular, 0o644, 0, 0);
            h.set_size(data.len() as u64);
            archive.append_data(&mut h, path, data)
        };
        let io = |e| Error::io("building the image archive", e);
        put("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io)?;
        put("index.json", &index).map_err(io)?;
        for (digest, blob) in [
            (&layer_digest, &layer),
            (&config_digest, &config),
            (&manifest_digest, &manifest),
        ] {
            let hex = digest.trim_start_matches("sha256:");
            put(&format!("blobs/sha256/{hex}"), blob).map_err(io)?;
        }
        let bytes = archive.into_inner().map_err(io)?;
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        std::fs::write(out, bytes)
            .map_err(|e| Error::io(format!("writing {}", out.display()), e))?;
        Ok(ImageArchive {
            path: out.to_owned(),
            name: self.name.clone(),
            digest: manifest_digest,
        })
    }

    fn layer_tar(&self) -> Result<Vec<u8>> {
        let mut tar = tar::Builder::new(Vec::new());
        tar.follow_symlinks(false);
        for (path, entry) in &self.entries {
            let res = match entry {
                Entry::Dir { mode, uid, gid } => {
                    let mut h = header(tar::EntryType::Directory, *mode, *uid, *gid);
                    h.set_size(0);
                    tar.append_data(&mut h, format!("{path}/"), std::io::empty())
                }
                Entry::File {
                    data,
                    mode,
                    uid,
                    gid,
                } => {
                    let bytes: std::sync::Arc<[u8]> = match data {
                        Source::Bytes(b) => b.clone(),
                        Source::Host(host) => std::fs::read(host)
                            .map_err(|e| Error::io(format!("reading {}", host.display()), e))?
                            .into(),
                    };
                    let mut h = header(tar::EntryType::Regular, *mode, *uid, *gid);
                    h.set_size(bytes.len() as u64);
                    tar.append_data(&mut h, path, &*bytes)
                }
                Entry::Symlink { target } => {
                    let mut h = header(tar::EntryType::Symlink, 0o777, 0, 0);
                    h.set_size(0);
                    tar.append_link(&mut h, path, target)
                }
            };
            res.map_err(|e| Error::io(format!("adding /{path} to the image layer"), e))?;
        }
        tar.into_inner()
            .map_err(|e| Error::io("finishing the image layer", e))
    }
}

fn header(kind: tar::EntryType, mode: u32, uid: u64, gid: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_mtime(0);
    h
}

/// `/a/./b/` → `a/b`: tar paths are relative, without `.` components or trailing slashes.
fn normalize(path: &str) -> String {
    Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn sha256(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    let mut out = String::with_capacity(71);
    out.push_str("sha256:");
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn json_error(e: serde_json::Error) -> Error {
    Error::io("encoding image metadata", std::io::Error::other(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_deterministic_and_complete() {
        let dir = tempfile::tempdir().unwrap();
        let build = || {
            ImageBuilder::new("eirinix.local/t:1")
                .contents("/etc/passwd", "root:x:0:0::/:/bin/sh\n", 0o644)
                .dir("/tmp", 0o1777, 0, 0)
                .symlink("/bin/sh", "busybox")
                .entrypoint(["/bin/sh"])
                .user("65532:65532")
        };
        let a = build().write_archive(&dir.path().join("a.tar")).unwrap();
        let b = build().write_archive(&dir.path().join("b.tar")).unwrap();
        assert_eq!(a.digest, b.digest, "same inputs, same image");
        assert_eq!(
            build().listing(),
            ["/bin/", "/bin/sh", "/etc/", "/etc/passwd", "/tmp/"]
        );
        let mut names = Vec::new();
        let mut ar = tar::Archive::new(std::fs::File::open(&a.path).unwrap());
        for e in ar.entries().unwrap() {
            names.push(e.unwrap().path().unwrap().display().to_string());
        }
        assert!(names.contains(&"index.json".to_owned()));
        assert!(names.contains(&"oci-layout".to_owned()));
        assert_eq!(names.iter().filter(|n| n.starts_with("blobs/")).count(), 3);
    }

    #[test]
    fn paths_are_normalized() {
        assert_eq!(normalize("/a/./b/"), "a/b");
        assert_eq!(normalize("c"), "c");
    }
}
