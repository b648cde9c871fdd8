//! Template spawn (issue 24, `docs/hibernation.md` slice 4): a module keeps
//! the state its pure `init` produced for given args, and later spawns with
//! those args are born hibernated on it instead of running `init` again.
//!
//! ```text
//!  spawn(module, args) ── templates.state(args) ──> born asleep on it
//!    └─ none ──> instantiate, init; no import called and a state saved
//!                ──> templates.keep(args, state)
//! ```
//!
//! An `init` that called no import (no `skyhost` call, no WASI call: no
//! clock, random, name or send) depended on its module and args alone and
//! did nothing outside its instance, so a service born on its saved state
//! is the service that running it again would give.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Most argument lists a module keeps a template for.
const MAX_KEYS: usize = 64;

/// Longest args a template is kept for, in bytes.
const MAX_ARGS: usize = 4 << 10;

/// What a module knows about spawns with one argument list.
#[derive(Debug, Clone)]
enum Entry {
    /// `init` was pure and left this state.
    State(Arc<[u8]>),
    /// `init` was pure and left no state: nothing to be born on.
    Stateless,
}

/// One module's templates, by args.
#[derive(Debug, Default)]
pub(crate) struct Templates {
    entries: Mutex<HashMap<Box<[u8]>, Entry>>,
}

impl Templates {
    /// The state a spawn with `args` is born on, if a pure `init` left one.
    pub fn state(&self, args: &[u8]) -> Option<Arc<[u8]>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(args)? {
            Entry::State(state) => Some(state.clone()),
            Entry::Stateless => None,
        }
    }

    /// Whether a pure `init` with `args` should have its state saved as a
    /// template: none is known for them yet, and there is room.
    pub fn wants(&self, args: &[u8]) -> bool {
        if args.len() > MAX_ARGS {
            return false;
        }
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.len() < MAX_KEYS && !entries.contains_key(args)
    }

    /// Keeps what a pure `init` with `args` left: its state, or `None`
    /// when it saved none.
    pub fn keep(&self, args: &[u8], state: Option<Vec<u8>>) {
        let entry = match state {
            Some(state) => Entry::State(state.into()),
            None => Entry::Stateless,
        };
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() < MAX_KEYS {
            entries.entry(args.into()).or_insert(entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_state_is_found_by_its_args_alone() {
        let t = Templates::default();
        assert!(t.wants(b"a"));
        t.keep(b"a", Some(b"state".to_vec()));
        assert_eq!(t.state(b"a").as_deref(), Some(&b"state"[..]));
        assert_eq!(t.state(b"b"), None);
        assert!(!t.wants(b"a"));
        assert!(t.wants(b"b"));
    }

    #[test]
    fn a_stateless_init_is_remembered_and_never_born_on() {
        let t = Templates::default();
        t.keep(b"", None);
        assert!(!t.wants(b""));
        assert_eq!(t.state(b""), None);
    }

    #[test]
    fn keys_and_args_are_bounded() {
        let t = Templates::default();
        assert!(!t.wants(&vec![0; MAX_ARGS + 1]));
        for i in 0..MAX_KEYS + 10 {
            t.keep(&i.to_le_bytes(), Some(vec![1]));
        }
        assert!(t.state(&(MAX_KEYS - 1).to_le_bytes()).is_some());
        assert!(t.state(&MAX_KEYS.to_le_bytes()).is_none());
        assert!(!t.wants(b"new"));
    }
}
