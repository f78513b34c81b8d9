//! Host and route matching, and the filters routes apply (redirect, rewrite, headers).

pub mod filters;
pub mod matcher;

use crate::runtime::{Entry, Port};
use matcher::RequestView;

/// Where a request landed.
#[derive(Debug)]
pub enum Found<'r> {
    /// No listener on this port serves the host.
    NoListener,
    /// The listener serves the host but no route matches: 404.
    NoRoute {
        listener: usize,
    },
    Route {
        listener: usize,
        entry: &'r Entry,
    },
}

/// Finds the listener for `host` (lower-case, no port) and the first matching entry.
pub fn find<'r>(port: &'r Port, host: &str, req: &RequestView<'_>) -> Found<'r> {
    let Some(listener) = port.listener_for(host) else {
        return Found::NoListener;
    };
    let entries = port.listeners[listener].entries(host);
    match entries.iter().find(|e| e.matcher.matches(req)) {
        Some(entry) => Found::Route { listener, entry },
        None => Found::NoRoute { listener },
    }
}
