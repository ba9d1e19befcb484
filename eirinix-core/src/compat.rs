//! Accessors that compile with every k8s-openapi version feature eirinix supports (v1_33 to
//! v1_37): some generated types changed between Kubernetes versions (for example
//! `StatefulSet::spec` and `Deployment::spec` are required from 1.35 on, optional before), and a
//! library must not pick the version its users build with.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, StatefulSet, StatefulSetSpec};

k8s_openapi::k8s_if_le_1_34! {
    /// The StatefulSet's spec, whichever k8s-openapi version feature is enabled.
    pub fn statefulset_spec(sts: &StatefulSet) -> Option<&StatefulSetSpec> {
        sts.spec.as_ref()
    }

    /// The Deployment's spec, whichever k8s-openapi version feature is enabled.
    pub fn deployment_spec(d: &Deployment) -> Option<&DeploymentSpec> {
        d.spec.as_ref()
    }
}

k8s_openapi::k8s_if_ge_1_35! {
    /// The StatefulSet's spec, whichever k8s-openapi version feature is enabled.
    pub fn statefulset_spec(sts: &StatefulSet) -> Option<&StatefulSetSpec> {
        Some(&sts.spec)
    }

    /// The Deployment's spec, whichever k8s-openapi version feature is enabled.
    pub fn deployment_spec(d: &Deployment) -> Option<&DeploymentSpec> {
        Some(&d.spec)
    }
}
