//! Signals: the dispositions the template and the workers set, the
//! handlers a worker installs (for `SIGABRT` and `SIGSEGV`), the template's
//! alarm, and signal names.
//!
//! Through `nix` (libc's `sigaction`, `sigprocmask`, `signal`): rustix
//! leaves signal dispositions to libc outside its unstable `runtime`
//! module. Installing a handler is `unsafe` in nix as here: the handler
//! runs at any point of the program. The handlers below are
//! async-signal-safe: atomics, `OnceLock::get` (an atomic load) and
//! `sigaction`. Hand-written: `setitimer` (nix's `alarm` counts whole
//! seconds; the template's watchdog needs a quarter of one), and
//! `sigaction` to read a disposition without setting one, or to reset a
//! real-time signal (nix's `sigaction` always sets one, and its `Signal`
//! names no real-time signal).

#![allow(unsafe_code)]

use std::ffi::{c_int, c_void};
use std::mem::MaybeUninit;
use std::ptr;
use std::sync::OnceLock;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use nix::sys::signal::{
    SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal, sigaction, signal, sigprocmask,
};

/// Set by the template when the parent ignored `SIGINT` at the fork (a
/// background job of a shell without job control, `nohup`): its workers
/// keep ignoring it, as a program the parent started would.
static INTERRUPTS_IGNORED: AtomicBool = AtomicBool::new(false);

/// In a freshly forked worker: Ctrl-C is caught by a handler that does
/// nothing, not ignored: an ignored signal stays ignored across `exec`, so
/// a program a task started would survive Ctrl-C, orphaned once the pool is
/// gone. A caught signal reverts to its default in the new program.
/// `SA_RESTART` restarts most system calls it interrupts in the worker; the
/// few the kernel never restarts (`nanosleep`, `poll`, ...) return `EINTR`,
/// which the standard library's sleeps and waits retry. Where the parent
/// ignored `SIGINT` (see [`template_signals`]) the worker keeps the
/// template's `SIG_IGN` instead, and so do the programs its tasks start.
pub(crate) fn catch_interrupts() {
    // ORDERING: Relaxed: stored by the template before it forked this
    // worker, which has its own copy of the template's memory.
    if INTERRUPTS_IGNORED.load(Relaxed) {
        return;
    }
    let act = SigAction::new(
        SigHandler::Handler(ignore_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handler does nothing, so it is safe wherever it runs.
    let _ = unsafe { sigaction(Signal::SIGINT, &act) };
}

/// A signal handler that does nothing: the signal is caught (and so reset
/// to its default by `exec`), not ignored.
extern "C" fn ignore_signal(_: c_int) {}

/// Unblocks every signal the forking thread may have blocked.
pub(crate) fn unblock_all() {
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

/// In the template, first thing: the dispositions a freshly `exec`ed
/// program would have. Every signal the parent caught gets its default
/// back (a parent's handler, say a `SIGTERM` handler that writes to a
/// self-pipe, would otherwise run in the template and every worker: the
/// signal would no longer end them, and the handler would write to whatever
/// a task opened under the pipe's descriptor number); ignored signals stay
/// ignored. Except `SIGSEGV` and `SIGBUS`, which keep the standard
/// library's stack-overflow handlers (a worker's own `SIGSEGV` handler
/// passes faults on to them, see [`on_protection_fault`]).
///
/// Then: the terminal's Ctrl-C is for the parent to handle (the template
/// never `exec`s, so ignoring it here reaches no program; each worker
/// catches it instead, or keeps ignoring it if the parent did, see
/// [`catch_interrupts`]); a parent that ignores `SIGCHLD` would make the
/// kernel reap our workers before we learn how they died. And no signal
/// stays blocked.
///
/// One `sigaction` reads each signal's disposition and a second resets
/// only a caught one: some 60 system calls, about 10 µs (design.md,
/// section 14, "Signals").
pub(crate) fn template_signals() {
    for sig in 1..=libc::SIGRTMAX() {
        if matches!(
            sig,
            libc::SIGKILL | libc::SIGSTOP | libc::SIGSEGV | libc::SIGBUS
        ) {
            continue;
        }
        // `None`: a number libc keeps for itself (glibc's 32 and 33).
        let Some(handler) = handler_of(sig) else {
            continue;
        };
        if sig == libc::SIGINT {
            // ORDERING: Relaxed: read by the workers this process forks
            // later, each in a copy of its memory.
            INTERRUPTS_IGNORED.store(handler == libc::SIG_IGN, Relaxed);
        }
        // SIGINT and SIGCHLD are set below.
        let later = matches!(sig, libc::SIGINT | libc::SIGCHLD);
        if handler != libc::SIG_DFL && handler != libc::SIG_IGN && !later {
            reset(sig);
        }
    }
    // SAFETY: ignoring a signal and restoring a default install no handler.
    unsafe {
        let _ = signal(Signal::SIGINT, SigHandler::SigIgn);
        let _ = signal(Signal::SIGCHLD, SigHandler::SigDfl);
    }
    unblock_all();
}

/// The handler of `sig` (`SIG_DFL`, `SIG_IGN` or a function's address), or
/// `None` where `sigaction` refuses the number.
fn handler_of(sig: c_int) -> Option<libc::sighandler_t> {
    let mut old = MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: with a null new action, sigaction only writes the current one
    // into `old`, which lives for the call.
    let done = unsafe { libc::sigaction(sig, ptr::null(), old.as_mut_ptr()) };
    // SAFETY: all zeroes is a valid `sigaction` (integers, a signal set and
    // an optional function pointer), and on success libc wrote a whole one.
    (done == 0).then(|| unsafe { old.assume_init() }.sa_sigaction)
}

/// Gives `sig` its default action.
fn reset(sig: c_int) {
    // SAFETY: all zeroes is a valid `sigaction`: `SIG_DFL` (0), no flags,
    // an empty mask.
    let default = unsafe { MaybeUninit::<libc::sigaction>::zeroed().assume_init() };
    // SAFETY: restoring a default installs no handler; `default` lives for
    // the call.
    unsafe { libc::sigaction(sig, &default, ptr::null_mut()) };
}

/// Arms a one-shot `SIGALRM` for this process in `after` (`Duration::ZERO`
/// disarms it), with the signal's default action: the process ends, killed
/// by `SIGALRM`. The template uses it as a watchdog around the one call that
/// may block on a lock inherited from the parent (see
/// `install_worker_panic_hook`).
pub(crate) fn alarm_in(after: Duration) {
    let value = libc::timeval {
        tv_sec: after.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_usec: after.subsec_micros() as libc::suseconds_t,
    };
    let timer = libc::itimerval {
        it_interval: libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
        it_value: value,
    };
    // SAFETY: restoring a default installs no handler; setitimer only sets
    // this process's real-time timer, from an itimerval live for the call.
    unsafe {
        let _ = signal(Signal::SIGALRM, SigHandler::SigDfl);
        libc::setitimer(libc::ITIMER_REAL, &timer, ptr::null_mut());
    }
}

/// What the `SIGABRT` handler calls.
static ABORT_HOOK: OnceLock<fn()> = OnceLock::new();

/// Makes `SIGABRT` call `hook` before its default action ends the process
/// (a handler that returns lets `abort` go on). For a single-threaded
/// worker, once; `hook` must be async-signal-safe, and may read `errno` as
/// the aborting code left it (the handler touches it before nothing else).
pub(crate) fn on_abort(hook: fn()) {
    let _ = ABORT_HOOK.set(hook);
    let act = SigAction::new(
        SigHandler::Handler(abort_handler),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler only loads `ABORT_HOOK` and calls an
    // async-signal-safe hook (this function's contract).
    let _ = unsafe { sigaction(Signal::SIGABRT, &act) };
}

extern "C" fn abort_handler(_: c_int) {
    if let Some(hook) = ABORT_HOOK.get() {
        hook();
    }
}

/// `si_code` of a `SIGSEGV` for an access the mapping's protection refused
/// (Linux's `SEGV_ACCERR`; the `libc` crate does not name it).
const SEGV_ACCERR: c_int = 2;

/// What the `SIGSEGV` handler calls, with the faulting address.
static FAULT_HOOK: OnceLock<fn(usize)> = OnceLock::new();
/// The `SIGSEGV` disposition the handler replaced, put back on its first
/// call.
static PREVIOUS_SEGV: OnceLock<SigAction> = OnceLock::new();

/// Makes a `SIGSEGV` for an access a mapping's protection refused call
/// `hook` with the faulting address. Either way the handler then puts back
/// the disposition it replaced (the standard library's stack-overflow
/// handler, or the default) and returns: the access faults again and that
/// disposition ends the process as before. For a single-threaded worker,
/// once; `hook` must be async-signal-safe. Returns whether the handler was
/// installed.
pub(crate) fn on_protection_fault(hook: fn(usize)) -> bool {
    let _ = FAULT_HOOK.set(hook);
    let act = SigAction::new(
        SigHandler::SigAction(segv_handler),
        SaFlags::SA_SIGINFO | SaFlags::SA_ONSTACK,
        SigSet::empty(),
    );
    // SAFETY: the handler only reads the siginfo the kernel gives it, loads
    // the two `OnceLock`s, calls an async-signal-safe hook (this function's
    // contract) and `sigaction`.
    match unsafe { sigaction(Signal::SIGSEGV, &act) } {
        Ok(previous) => {
            // A fault before this line (none can happen here: nothing
            // between the two touches memory) would restore the default.
            let _ = PREVIOUS_SEGV.set(previous);
            true
        }
        Err(_) => false,
    }
}

extern "C" fn segv_handler(_: c_int, info: *mut libc::siginfo_t, _: *mut c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler;
    // `si_addr` is the faulting address for SIGSEGV.
    let (addr, code) = unsafe { ((*info).si_addr() as usize, (*info).si_code) };
    if code == SEGV_ACCERR {
        if let Some(hook) = FAULT_HOOK.get() {
            hook(addr);
        }
    }
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    let previous = PREVIOUS_SEGV.get().unwrap_or(&default);
    // SAFETY: puts back a disposition this process had (or the default);
    // sigaction is async-signal-safe.
    let _ = unsafe { sigaction(Signal::SIGSEGV, previous) };
}

/// The name of a signal number, as `kill -l` would print it ("SIGSEGV").
pub(crate) fn signal_name(signal: i32) -> Option<&'static str> {
    Signal::try_from(signal).ok().map(Signal::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_have_names() {
        assert_eq!(signal_name(libc::SIGSEGV), Some("SIGSEGV"));
        assert_eq!(signal_name(libc::SIGKILL), Some("SIGKILL"));
        assert_eq!(signal_name(0), None);
        assert_eq!(signal_name(1000), None);
    }
}
