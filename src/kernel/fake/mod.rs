//! In-memory kernels for unit tests (knftables' `Fake` idea): the same traits as the real
//! sockets, state kept in memory, and any call can be told to fail.
//!
//! * [`nft`]: interprets our batches message by message (all or nothing, `EEXIST` for an
//!   exclusive table create, `ENOENT` for a jump to a missing chain) and answers dumps with
//!   the attributes the kernel sends, so the read-back decoder runs on them unchanged;
//! * [`xt`]: keeps each legacy table as a decoded table, instantiates built-in tables on
//!   first read as the kernel does, and enforces the replace's entry-count check (`EAGAIN`);
//! * [`routes`]: a multiset of routing objects.
//!
//! ```
//! use mesh_redirect::kernel::fake::{Call, FakeKernel};
//! let k = FakeKernel::default();
//! k.fail(Call::NfBatch, libc::EPERM, 1); // the next batch is refused with EPERM
//! ```

pub mod nft;
pub mod routes;
pub mod xt;

use super::Kernel;
use crate::xt::abi::Layout;
use std::cell::RefCell;
use std::io;
use std::rc::Rc;

/// A kind of kernel call, for failure injection and call counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Call {
    /// Opening the nf_tables socket.
    NfOpen,
    /// Sending a batch (the failure is a refusal of its first message).
    NfBatch,
    /// Any nf_tables dump.
    NfDump,
    /// Opening an xtables socket.
    XtOpen,
    /// Listing the loaded legacy tables.
    XtLoaded,
    /// `GET_INFO`.
    XtInfo,
    /// `GET_ENTRIES`.
    XtEntries,
    /// `SET_REPLACE`.
    XtReplace,
    /// `SET_ADD_COUNTERS`.
    XtAddCounters,
    /// Opening the routing socket.
    RouteOpen,
    /// Adding a routing object.
    RouteAdd,
    /// Deleting a routing object.
    RouteDelete,
    /// Looking for a routing object.
    RoutePresent,
}

/// A pending failure: let `skip` calls of the kind through, then fail `times` of them.
#[derive(Debug, Clone, Copy)]
struct Failure {
    call: Call,
    errno: i32,
    skip: usize,
    times: usize,
}

/// Everything a fake kernel holds; shared by every handle it opened.
#[derive(Debug, Default)]
pub struct State {
    /// nf_tables state.
    pub nft: nft::NftState,
    /// Legacy tables, both families.
    pub xt: xt::XtState,
    /// Routing objects.
    pub routes: routes::RouteState,
    failures: Vec<Failure>,
    calls: Vec<Call>,
}

impl State {
    /// Records a call and fails it when a failure is pending for its kind.
    pub(crate) fn enter(&mut self, call: Call) -> io::Result<()> {
        self.calls.push(call);
        if let Some(f) = self
            .failures
            .iter_mut()
            .find(|f| f.call == call && f.times > 0)
        {
            if f.skip > 0 {
                f.skip -= 1;
                return Ok(());
            }
            f.times -= 1;
            return Err(io::Error::from_raw_os_error(f.errno));
        }
        Ok(())
    }
}

/// A fake network namespace: open its interfaces through [`Kernel`], inspect and change
/// its state directly.
#[derive(Debug, Clone, Default)]
pub struct FakeKernel {
    state: Rc<RefCell<State>>,
}

impl FakeKernel {
    /// Makes the next `times` calls of kind `call` fail with `errno`.
    pub fn fail(&self, call: Call, errno: i32, times: usize) {
        self.fail_after(call, 0, errno);
        self.state
            .borrow_mut()
            .failures
            .last_mut()
            .expect("just pushed")
            .times = times;
    }

    /// Lets the next `skip` calls of kind `call` through, then fails one with `errno`.
    pub fn fail_after(&self, call: Call, skip: usize, errno: i32) {
        self.state.borrow_mut().failures.push(Failure {
            call,
            errno,
            skip,
            times: 1,
        });
    }

    /// How many calls of kind `call` were made.
    pub fn calls(&self, call: Call) -> usize {
        self.state
            .borrow()
            .calls
            .iter()
            .filter(|c| **c == call)
            .count()
    }

    /// Direct access to the state (to inspect it, or to change it as another tool would).
    pub fn state(&self) -> std::cell::RefMut<'_, State> {
        self.state.borrow_mut()
    }
}

impl Kernel for FakeKernel {
    type Nf = nft::FakeNfSocket;
    type Xt = xt::FakeXtSocket;
    type Routes = routes::FakeRouteSocket;

    fn nftables(&self) -> io::Result<Self::Nf> {
        self.state.borrow_mut().enter(Call::NfOpen)?;
        Ok(nft::FakeNfSocket::new(self.state.clone()))
    }

    fn xtables(&self, layout: Layout) -> io::Result<Self::Xt> {
        self.state.borrow_mut().enter(Call::XtOpen)?;
        Ok(xt::FakeXtSocket::new(self.state.clone(), layout))
    }

    fn xt_loaded_tables(&self, layout: Layout) -> io::Result<Vec<String>> {
        let mut s = self.state.borrow_mut();
        s.enter(Call::XtLoaded)?;
        Ok(s.xt.loaded(layout))
    }

    fn routes(&self) -> io::Result<Self::Routes> {
        self.state.borrow_mut().enter(Call::RouteOpen)?;
        Ok(routes::FakeRouteSocket::new(self.state.clone()))
    }
}
