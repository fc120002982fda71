//! Routing objects in memory: a multiset, as the kernel lets a rule exist more than once.

use super::{Call, State};
use crate::kernel::RouteOps;
use crate::routes::RouteObject;
use std::cell::RefCell;
use std::io;
use std::rc::Rc;

/// The routing objects of a fake namespace.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RouteState {
    /// Every object present, duplicates included.
    pub objects: Vec<RouteObject>,
    /// `(family, table)` pairs that also hold a route other than `local default dev lo`
    /// (another tool's table).
    pub foreign_routes: Vec<(u8, u32)>,
}

/// A fake rtnetlink socket.
#[derive(Debug)]
pub struct FakeRouteSocket {
    state: Rc<RefCell<State>>,
}

impl FakeRouteSocket {
    pub(crate) fn new(state: Rc<RefCell<State>>) -> FakeRouteSocket {
        FakeRouteSocket { state }
    }
}

impl RouteOps for FakeRouteSocket {
    fn add(&mut self, obj: RouteObject) -> io::Result<bool> {
        let mut s = self.state.borrow_mut();
        s.enter(Call::RouteAdd)?;
        if s.routes.objects.contains(&obj) {
            return Ok(false);
        }
        s.routes.objects.push(obj);
        Ok(true)
    }

    fn delete(&mut self, obj: RouteObject) -> io::Result<bool> {
        let mut s = self.state.borrow_mut();
        s.enter(Call::RouteDelete)?;
        match s.routes.objects.iter().position(|o| *o == obj) {
            Some(i) => {
                s.routes.objects.remove(i);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn fwmark_rules(&mut self) -> io::Result<Vec<RouteObject>> {
        let mut s = self.state.borrow_mut();
        s.enter(Call::RoutePresent)?;
        Ok(s.routes
            .objects
            .iter()
            .filter(|o| matches!(o, RouteObject::FwmarkRule { .. }))
            .copied()
            .collect())
    }

    fn local_default_tables(&mut self) -> io::Result<Vec<(u8, u32)>> {
        let mut s = self.state.borrow_mut();
        s.enter(Call::RoutePresent)?;
        let mut out = Vec::new();
        for o in &s.routes.objects {
            if let RouteObject::LocalDefault { family, table } = *o {
                let foreign = s.routes.foreign_routes.contains(&(family, table));
                if !foreign && !out.contains(&(family, table)) {
                    out.push((family, table));
                }
            }
        }
        Ok(out)
    }

    fn present(&mut self, obj: RouteObject) -> io::Result<bool> {
        let mut s = self.state.borrow_mut();
        s.enter(Call::RoutePresent)?;
        Ok(s.routes.objects.contains(&obj))
    }
}
