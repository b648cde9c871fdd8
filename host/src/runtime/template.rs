//! Template spawn (issue 24, `docs/hibernation.md` slice 4): a module keeps
//! what its pure `init` left for given args (the state it saves, or else an
//! image of its memory), and later spawns with those args are born
//! hibernated on it instead of running `init` again.
//!
//! ```text
//!  spawn(module, args) ── templates.born_on(args) ──> born asleep on it
//!    └─ none ──> instantiate, init; no import called ──> save-state, or
//!                an image of the memory (the instance serves on)
//!                ──> templates.keep(args, kept)
//! ```
//!
//! An `init` that called no import (no `skyhost` call, no WASI call: no
//! clock, random, name or send) depended on its module and args alone and
//! did nothing outside its instance, so a service born on its saved state
//! is the service that running it again would give.

use std::collections::HashMap;
use std::sync::Mutex;

use super::hibernate::Kept;

/// Most argument lists a module keeps a template for.
const MAX_KEYS: usize = 64;

/// Longest args a template is kept for, in bytes.
const MAX_ARGS: usize = 4 << 10;

/// What a module knows about spawns with one argument list.
#[derive(Clone)]
enum Entry {
    /// `init` was pure and left this state or memory image.
    Born(Kept),
    /// `init` was pure and left nothing that could be kept: nothing to be
    /// born on.
    Nothing,
}

/// One module's templates, by args.
#[derive(Default)]
pub(crate) struct Templates {
    entries: Mutex<HashMap<Box<[u8]>, Entry>>,
}

impl Templates {
    /// What a spawn with `args` is born on, if a pure `init` left it.
    pub fn born_on(&self, args: &[u8]) -> Option<Kept> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(args)? {
            Entry::Born(kept) => Some(kept.clone()),
            Entry::Nothing => None,
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

    /// Keeps what a pure `init` with `args` left: its state or memory
    /// image, or `None` when neither could be kept.
    pub fn keep(&self, args: &[u8], kept: Option<Kept>) {
        let entry = match kept {
            Some(kept) => Entry::Born(kept),
            None => Entry::Nothing,
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

    fn state(bytes: &[u8]) -> Kept {
        Kept::State(bytes.into())
    }

    #[test]
    fn a_kept_state_is_found_by_its_args_alone() {
        let t = Templates::default();
        assert!(t.wants(b"a"));
        t.keep(b"a", Some(state(b"state")));
        assert!(matches!(t.born_on(b"a"), Some(Kept::State(s)) if &s[..] == b"state"));
        assert!(t.born_on(b"b").is_none());
        assert!(!t.wants(b"a"));
        assert!(t.wants(b"b"));
    }

    #[test]
    fn a_stateless_init_is_remembered_and_never_born_on() {
        let t = Templates::default();
        t.keep(b"", None);
        assert!(!t.wants(b""));
        assert!(t.born_on(b"").is_none());
    }

    #[test]
    fn keys_and_args_are_bounded() {
        let t = Templates::default();
        assert!(!t.wants(&vec![0; MAX_ARGS + 1]));
        for i in 0..MAX_KEYS + 10 {
            t.keep(&i.to_le_bytes(), Some(state(&[1])));
        }
        assert!(t.born_on(&(MAX_KEYS - 1).to_le_bytes()).is_some());
        assert!(t.born_on(&MAX_KEYS.to_le_bytes()).is_none());
        assert!(!t.wants(b"new"));
    }
}
