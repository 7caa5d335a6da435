//! The packaging tier: what ships, checked as users meet it. The CRD (`crd`, and the schemas and
//! CEL rules a 1.20 server cannot check, `schemas`), the Helm chart and the kustomize base on the
//! real API server (`chart`, `deploy`), the Dockerfile and the image (`dockerfile`, `image`), and
//! the README's first command (`demo`), and the krew manifest of the plugin (`krew`).

mod harness;

mod chart;
mod crd;
mod demo;
mod deploy;
mod dockerfile;
mod image;
mod krew;
mod schemas;
