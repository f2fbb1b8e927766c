//! Cross-service tests live in `tests/`; this crate holds what several of them share:
//! rendering the Helm chart into typed Kubernetes objects.

pub mod manifest;
