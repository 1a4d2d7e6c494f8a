//! The resource types the server knows, with what discovery and errors say about them.

use crate::status::Qualified;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Res {
    Namespace,
    Pod,
    Secret,
    ConfigMap,
    PersistentVolumeClaim,
    Event,
    ServiceAccount,
    Job,
    PriorityClass,
}

pub const ALL: [Res; 9] = [
    Res::Namespace,
    Res::Pod,
    Res::Secret,
    Res::ConfigMap,
    Res::PersistentVolumeClaim,
    Res::Event,
    Res::ServiceAccount,
    Res::Job,
    Res::PriorityClass,
];

/// The API groups besides the core group, with their one version.
pub const GROUPS: [(&str, &str); 2] = [("batch", "v1"), ("scheduling.k8s.io", "v1")];

impl Res {
    pub fn plural(self) -> &'static str {
        match self {
            Res::Namespace => "namespaces",
            Res::Pod => "pods",
            Res::Secret => "secrets",
            Res::ConfigMap => "configmaps",
            Res::PersistentVolumeClaim => "persistentvolumeclaims",
            Res::Event => "events",
            Res::ServiceAccount => "serviceaccounts",
            Res::Job => "jobs",
            Res::PriorityClass => "priorityclasses",
        }
    }

    pub fn singular(self) -> &'static str {
        match self {
            Res::Namespace => "namespace",
            Res::Pod => "pod",
            Res::Secret => "secret",
            Res::ConfigMap => "configmap",
            Res::PersistentVolumeClaim => "persistentvolumeclaim",
            Res::Event => "event",
            Res::ServiceAccount => "serviceaccount",
            Res::Job => "job",
            Res::PriorityClass => "priorityclass",
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            Res::Namespace => "Namespace",
            Res::Pod => "Pod",
            Res::Secret => "Secret",
            Res::ConfigMap => "ConfigMap",
            Res::PersistentVolumeClaim => "PersistentVolumeClaim",
            Res::Event => "Event",
            Res::ServiceAccount => "ServiceAccount",
            Res::Job => "Job",
            Res::PriorityClass => "PriorityClass",
        }
    }

    pub fn short_names(self) -> &'static [&'static str] {
        match self {
            Res::Namespace => &["ns"],
            Res::Pod => &["po"],
            Res::Secret => &[],
            Res::ConfigMap => &["cm"],
            Res::PersistentVolumeClaim => &["pvc"],
            Res::Event => &["ev"],
            Res::ServiceAccount => &["sa"],
            Res::Job => &[],
            Res::PriorityClass => &["pc"],
        }
    }

    pub fn group(self) -> &'static str {
        match self {
            Res::Job => "batch",
            Res::PriorityClass => "scheduling.k8s.io",
            _ => "",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Res::Job => "batch/v1",
            Res::PriorityClass => "scheduling.k8s.io/v1",
            _ => "v1",
        }
    }

    /// The version alone (what error messages call "in version").
    pub fn version(self) -> &'static str {
        "v1"
    }

    pub fn namespaced(self) -> bool {
        !matches!(self, Res::Namespace | Res::PriorityClass)
    }

    /// Verbs served (discovery lists them; others get 405).
    pub fn verbs(self) -> &'static [&'static str] {
        match self {
            Res::Event => &["get", "list", "watch"],
            Res::ConfigMap | Res::Secret => &["create", "delete", "get", "list", "update", "watch"],
            _ => &["create", "delete", "get", "list", "watch"],
        }
    }

    pub fn qualified(self) -> Qualified<'static> {
        Qualified {
            group: self.group(),
            plural: self.plural(),
        }
    }

    /// Core (`/api/v1`) resource by plural.
    pub fn core_by_plural(plural: &str) -> Option<Res> {
        ALL.into_iter()
            .find(|r| r.group().is_empty() && r.plural() == plural)
    }

    /// A resource of an API group by plural.
    pub fn by_group_plural(group: &str, plural: &str) -> Option<Res> {
        ALL.into_iter()
            .find(|r| !group.is_empty() && r.group() == group && r.plural() == plural)
    }

    /// The field selectors the real API server supports for this type (beyond
    /// metadata.name and metadata.namespace, which every type has).
    pub fn field_labels(self) -> &'static [&'static str] {
        match self {
            Res::Pod => &[
                "spec.nodeName",
                "spec.restartPolicy",
                "spec.schedulerName",
                "spec.serviceAccountName",
                "spec.hostNetwork",
                "status.phase",
                "status.podIP",
                "status.podIPs",
                "status.nominatedNodeName",
            ],
            Res::Secret => &["type"],
            Res::Namespace => &["status.phase"],
            Res::Job => &["status.successful"],
            Res::Event => &[
                "involvedObject.kind",
                "involvedObject.namespace",
                "involvedObject.name",
                "involvedObject.uid",
                "involvedObject.apiVersion",
                "involvedObject.resourceVersion",
                "involvedObject.fieldPath",
                "reason",
                "reportingComponent",
                "source",
                "type",
            ],
            Res::ConfigMap
            | Res::PersistentVolumeClaim
            | Res::ServiceAccount
            | Res::PriorityClass => &[],
        }
    }
}
