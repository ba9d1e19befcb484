//! Without binaries, starting a plane fails (never skips) with provisioning instructions.
//!
//! This is its own test binary because it changes process-global environment variables.

use eirinix_testenv::{ControlPlane, Error, check_assets};

#[tokio::test]
async fn missing_binaries_name_the_provision_script() {
    let empty = tempfile::tempdir().unwrap();

    // The explicit-directory API.
    let err = check_assets(empty.path()).unwrap_err();
    assert!(matches!(err, Error::MissingBinaries { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("scripts/provision.sh"), "{msg}");
    assert!(msg.contains("KUBEBUILDER_ASSETS"), "{msg}");
    assert!(msg.contains("etcd and kube-apiserver"), "{msg}");

    let err = ControlPlane::builder()
        .assets_dir(empty.path())
        .start()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("scripts/provision.sh"), "{err}");

    // Only one of the two binaries present.
    std::fs::write(empty.path().join("etcd"), "").unwrap();
    let msg = check_assets(empty.path()).unwrap_err().to_string();
    assert!(msg.contains("kube-apiserver not found"), "{msg}");
    std::fs::remove_file(empty.path().join("etcd")).unwrap();

    // The environment lookup (EIRINIX_ASSETS wins over KUBEBUILDER_ASSETS).
    // SAFETY: this is the only test of this binary, nothing reads the environment concurrently.
    unsafe {
        std::env::set_var("EIRINIX_ASSETS", empty.path());
        std::env::set_var("KUBEBUILDER_ASSETS", "/nonexistent/should-not-be-used");
    }
    let msg = eirinix_testenv::assets_dir().unwrap_err().to_string();
    assert!(msg.contains("EIRINIX_ASSETS"), "{msg}");
    assert!(msg.contains(&empty.path().display().to_string()), "{msg}");

    let msg = ControlPlane::start().await.unwrap_err().to_string();
    assert!(msg.contains("scripts/provision.sh"), "{msg}");

    // The shared plane reports it too, to every caller.
    for _ in 0..2 {
        let msg = ControlPlane::shared().await.unwrap_err().to_string();
        assert!(msg.contains("scripts/provision.sh"), "{msg}");
    }
    println!("{msg}");
}
