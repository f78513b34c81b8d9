//! What the `weir-controller` command line does beyond the controller itself: a local CA
//! and SPIFFE SVIDs (`ca`), self-signed demo certificates (`tls-secret`), the status report
//! (`check`) and sidecar injection (`inject`). Each is a library function, so the tests
//! call it without the binary.

pub mod ca;
pub mod certs;
pub mod check;
pub mod inject;
