//! Who keeps maps, programs and links alive: objects, sessions and pins.
//!
//! Linux ties a BPF object to the file descriptors that refer to it and to
//! its bpffs pins; closing the last of them frees it. Here every request
//! that creates something (a whole object file, one map, one program, one
//! link) makes an [`Object`] listing the ids it created, held by the
//! client that asked (the [`Session`] its request came with: the session
//! and its client generation) and, when the host asked for it, by a pin
//! name. When the
//! client goes (closed, or killed at any byte: the control task sees the
//! port close) its session lets go of its objects; an object with neither
//! holder nor pin is freed whole (links detached, programs unloaded, maps
//! dropped), and the heap they took comes back.
//!
//! The table is only touched under the runtime's lock (task context).

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use ktrace_abi::bpf::ObjectInfo;

use crate::error::{Error, Kind};
use crate::session::Session;

/// What one request created.
pub struct Object {
    pub id: u32,
    pub name: String,
    pub pin: Option<String>,
    /// The client that created it (even if it left while the request
    /// ran: it is released right after).
    pub holder: Option<Session>,
    pub maps: Vec<u32>,
    pub progs: Vec<u32>,
    pub links: Vec<u32>,
}

impl Object {
    pub fn info(&self) -> ObjectInfo {
        ObjectInfo {
            id: self.id,
            name: self.name.clone(),
            pin: self.pin.clone(),
            session: self.holder.map(|h| h.id as u32),
            maps: self.maps.clone(),
            programs: self.progs.clone(),
            links: self.links.clone(),
        }
    }

    fn is_empty(&self) -> bool {
        self.maps.is_empty() && self.progs.is_empty() && self.links.is_empty()
    }

    /// Nothing keeps it alive any more.
    pub fn orphaned(&self) -> bool {
        self.pin.is_none() && self.holder.is_none()
    }
}

/// Every object, by id (numbered apart from maps, programs and links).
pub struct Objects {
    pub by_id: BTreeMap<u32, Object>,
    next_id: u32,
}

impl Objects {
    pub const fn new() -> Self {
        Self {
            by_id: BTreeMap::new(),
            next_id: 1,
        }
    }

    /// Refuses a pin name that is taken (before anything is created).
    pub fn check_pin(&self, pin: Option<&str>) -> Result<(), Error> {
        let Some(name) = pin else { return Ok(()) };
        if name.is_empty() || name.len() > 64 || name.chars().any(char::is_whitespace) {
            return Err(Error::new(
                Kind::Invalid,
                format!("pin name {name:?} must be 1 to 64 characters without spaces"),
            ));
        }
        if let Some(o) = self.by_id.values().find(|o| o.pin.as_deref() == Some(name)) {
            return Err(Error::new(Kind::Exists,
                format!(
                    "the pin `{name}` is taken by object {} (`{}`): unload it first (`ktrace unload {name}`) or choose another pin name",
                    o.id, o.name
                ),
            ));
        }
        Ok(())
    }

    /// Records what a request of `session`'s client created.
    pub fn adopt(
        &mut self,
        name: &str,
        pin: Option<String>,
        parts: Parts,
        session: &Session,
    ) -> &Object {
        let id = self.next_id;
        self.next_id += 1;
        self.by_id.entry(id).or_insert(Object {
            id,
            name: String::from(name),
            pin,
            holder: Some(*session),
            maps: parts.maps,
            progs: parts.progs,
            links: parts.links,
        })
    }

    /// Forgets ids that were freed one by one (map free, program unload,
    /// detach); an object left with nothing goes, pin and all.
    pub fn forget(&mut self, maps: &[u32], progs: &[u32], links: &[u32]) {
        self.by_id.retain(|_, o| {
            o.maps.retain(|m| !maps.contains(m));
            o.progs.retain(|p| !progs.contains(p));
            o.links.retain(|l| !links.contains(l));
            !o.is_empty()
        });
    }

    /// The object `spec` names: a pin, an id, or a name one object has.
    pub fn resolve(&self, spec: &str) -> Result<u32, Error> {
        if let Some(o) = self.by_id.values().find(|o| o.pin.as_deref() == Some(spec)) {
            return Ok(o.id);
        }
        if let Some(o) = spec.parse::<u32>().ok().and_then(|id| self.by_id.get(&id)) {
            return Ok(o.id);
        }
        let named: Vec<&Object> = self.by_id.values().filter(|o| o.name == spec).collect();
        match named[..] {
            [o] => Ok(o.id),
            [] => {
                let known: Vec<String> = self
                    .by_id
                    .values()
                    .map(|o| match &o.pin {
                        Some(p) => format!("{} ({}, pinned as {p})", o.id, o.name),
                        None => format!("{} ({})", o.id, o.name),
                    })
                    .collect();
                Err(Error::new(
                    Kind::NoEntry,
                    format!(
                        "no object, pin or object id `{spec}`; objects: {}",
                        super::list_or_none(&known)
                    ),
                ))
            }
            _ => Err(Error::new(
                Kind::Invalid,
                format!(
                    "{} objects are named `{spec}`; name one by id ({})",
                    named.len(),
                    named
                        .iter()
                        .map(|o| format!("{}", o.id))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    /// Lets go of what earlier clients of `now`'s session held; returns
    /// the ids of objects that nothing keeps any more.
    #[must_use = "the orphans are to be freed, or they leak"]
    pub fn release(&mut self, now: &Session) -> Vec<u32> {
        let mut orphans = Vec::new();
        for o in self.by_id.values_mut() {
            if o.holder
                .is_some_and(|h| h.id == now.id && h.generation != now.generation)
            {
                o.holder = None;
                if o.orphaned() {
                    orphans.push(o.id);
                }
            }
        }
        orphans
    }
}

/// The ids one request created.
#[derive(Default)]
pub struct Parts {
    pub maps: Vec<u32>,
    pub progs: Vec<u32>,
    pub links: Vec<u32>,
}
