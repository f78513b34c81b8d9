//! The file source: a file or a directory of multi-document YAML manifests, the same ones a
//! user would `kubectl apply`. It is the embedded default for local runs, demos and tests.
//!
//! Loading is all-or-nothing: one bad document rejects the whole load, so a half-edited
//! directory never becomes a half-applied config. The watcher then keeps the last good
//! [`Snapshot`] and reports what was wrong, naming the file, the document and the field.
//!
//! Files over [`MAX_FILE_BYTES`], loads over [`MAX_TOTAL_BYTES`] and symlink loops are
//! refused the same way, naming the path.

mod parse;
mod walk;
mod watch;

pub use super::SourceState;
pub use parse::{LoadError, Loaded, Problem, load, parse_str};
pub use walk::{MAX_FILE_BYTES, MAX_TOTAL_BYTES};
pub use watch::{FileWatch, WatchError, watch};
