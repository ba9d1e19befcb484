//! The extension tested offline with `eirinix_core::review`: no cluster needed.

use eirinix_core::review::{parse_pod, review};
use sticky_message::StickyMessage;

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: app-0
  labels: { cloudfoundry.org/source_type: APP }
spec:
  containers:
    - { name: opi, image: app:1, env: [ { name: PORT, value: "8080" } ] }
    - { name: sidecar, image: side:1 }
"#;

#[tokio::test]
async fn injects_into_every_container_once() {
    let pod = parse_pod(POD).unwrap();
    let first = review(
        StickyMessage {
            message: "hi".into(),
        },
        &pod,
    )
    .await
    .unwrap();
    for c in &first.pod.spec.as_ref().unwrap().containers {
        let env = c.env.as_ref().unwrap();
        assert_eq!(
            env.iter().filter(|e| e.name == "STICKY_MESSAGE").count(),
            1,
            "{}",
            c.name
        );
        assert_eq!(env.last().unwrap().value.as_deref(), Some("hi"));
    }
    // The original env is kept in front.
    assert_eq!(
        first.pod.spec.as_ref().unwrap().containers[0]
            .env
            .as_ref()
            .unwrap()[0]
            .name,
        "PORT"
    );
    let again = review(
        StickyMessage {
            message: "hi".into(),
        },
        &first.pod,
    )
    .await
    .unwrap();
    assert!(
        again.mutation.as_patch().is_none(),
        "a pod that already has the message must not be patched twice"
    );
    // A copied pod with a stale value (another message) is corrected, not trusted.
    let changed = review(
        StickyMessage {
            message: "new".into(),
        },
        &first.pod,
    )
    .await
    .unwrap();
    for c in &changed.pod.spec.as_ref().unwrap().containers {
        let values: Vec<_> = c
            .env
            .iter()
            .flatten()
            .filter(|e| e.name == "STICKY_MESSAGE")
            .map(|e| e.value.as_deref())
            .collect();
        assert_eq!(values, [Some("new")], "{}", c.name);
    }
}
