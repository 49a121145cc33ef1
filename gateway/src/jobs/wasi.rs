//! The WASI preview-1 surface a job sees: exactly the functions in
//! [`ALLOWED_IMPORTS`], nothing else is defined in the job linker.
//!
//! - `fd_read` reads fd 0 (the job's input); every other fd is `EBADF`.
//! - `fd_write` writes fd 1 (the output, capped: a write past the cap ends
//!   the job with "output too large") and fd 2 (diagnostics, truncated
//!   silently at [`STDERR_CAPTURE`] bytes); every other fd is `EBADF`.
//! - `proc_exit` ends the job with that status.
//! - arguments and environment are empty.
//!
//! There is no clock, no randomness, no filesystem and no network: a job's
//! output is a function of its module and its input alone.

use wasmtime::{Caller, Extern, Linker};

use super::sandbox::JobState;

/// The module name of WASI preview 1.
pub const MODULE: &str = "wasi_snapshot_preview1";

/// The preview-1 functions a job may import: stdin, stdout/stderr, exit,
/// and the empty argument and environment lists Rust's `std` asks for at
/// startup.
pub const ALLOWED_IMPORTS: [&str; 7] = [
    "fd_read",
    "fd_write",
    "proc_exit",
    "args_get",
    "args_sizes_get",
    "environ_get",
    "environ_sizes_get",
];

/// Bytes of stderr kept to explain a failed job.
pub const STDERR_CAPTURE: usize = 4096;

const ERRNO_SUCCESS: i32 = 0;
const ERRNO_BADF: i32 = 8;
const ERRNO_FAULT: i32 = 21;

/// The job called `proc_exit` with this status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the job exited with status {0}")]
pub struct JobExit(pub u32);

/// The job wrote more than its output cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the job's output exceeded its cap of {0} bytes")]
pub struct OutputOverflow(pub usize);

/// Defines the allowed preview-1 functions in `linker`.
pub fn add_to_linker(linker: &mut Linker<JobState>) -> wasmtime::Result<()> {
    linker.func_wrap(MODULE, "fd_read", fd_read)?;
    linker.func_wrap(MODULE, "fd_write", fd_write)?;
    linker.func_wrap(MODULE, "proc_exit", |_: Caller<'_, JobState>, code: i32| {
        Err::<(), _>(wasmtime::Error::new(JobExit(code as u32)))
    })?;
    for (name, sizes) in [
        ("args_get", false),
        ("args_sizes_get", true),
        ("environ_get", false),
        ("environ_sizes_get", true),
    ] {
        if sizes {
            linker.func_wrap(MODULE, name, empty_sizes)?;
        } else {
            linker.func_wrap(MODULE, name, |_: Caller<'_, JobState>, _: i32, _: i32| {
                ERRNO_SUCCESS
            })?;
        }
    }
    Ok(())
}

/// `*count = 0; *size = 0`: no arguments, no environment.
fn empty_sizes(mut caller: Caller<'_, JobState>, count_ptr: i32, size_ptr: i32) -> i32 {
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        return ERRNO_FAULT;
    };
    let mem = memory.data_mut(&mut caller);
    match (
        put_u32(mem, count_ptr as u32, 0),
        put_u32(mem, size_ptr as u32, 0),
    ) {
        (Some(()), Some(())) => ERRNO_SUCCESS,
        _ => ERRNO_FAULT,
    }
}

fn fd_read(
    mut caller: Caller<'_, JobState>,
    fd: i32,
    iovs: i32,
    iovs_len: i32,
    nread_ptr: i32,
) -> i32 {
    if fd != 0 {
        return ERRNO_BADF;
    }
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        return ERRNO_FAULT;
    };
    let (mem, state) = memory.data_and_store_mut(&mut caller);
    let Some(buffers) = iovecs(mem, iovs as u32, iovs_len as u32) else {
        return ERRNO_FAULT;
    };
    let mut total = 0u32;
    for (ptr, len) in buffers {
        let rest = &state.input[state.input_pos..];
        let n = rest.len().min(len as usize);
        let Some(dst) = mem.get_mut(ptr as usize..ptr as usize + n) else {
            return ERRNO_FAULT;
        };
        dst.copy_from_slice(&rest[..n]);
        state.input_pos += n;
        total += n as u32;
        if n < len as usize {
            break;
        }
    }
    match put_u32(mem, nread_ptr as u32, total) {
        Some(()) => ERRNO_SUCCESS,
        None => ERRNO_FAULT,
    }
}

fn fd_write(
    mut caller: Caller<'_, JobState>,
    fd: i32,
    iovs: i32,
    iovs_len: i32,
    nwritten_ptr: i32,
) -> wasmtime::Result<i32> {
    if fd != 1 && fd != 2 {
        return Ok(ERRNO_BADF);
    }
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        return Ok(ERRNO_FAULT);
    };
    let (mem, state) = memory.data_and_store_mut(&mut caller);
    let Some(buffers) = iovecs(mem, iovs as u32, iovs_len as u32) else {
        return Ok(ERRNO_FAULT);
    };
    let mut total = 0u32;
    for (ptr, len) in buffers {
        let Some(src) = mem.get(ptr as usize..ptr as usize + len as usize) else {
            return Ok(ERRNO_FAULT);
        };
        if fd == 1 {
            if state.output.len() + src.len() > state.max_output {
                state.output_overflow = true;
                return Err(wasmtime::Error::new(OutputOverflow(state.max_output)));
            }
            state.output.extend_from_slice(src);
        } else {
            let room = STDERR_CAPTURE.saturating_sub(state.stderr.len());
            state.stderr.extend_from_slice(&src[..room.min(src.len())]);
        }
        total += len;
    }
    Ok(match put_u32(mem, nwritten_ptr as u32, total) {
        Some(()) => ERRNO_SUCCESS,
        None => ERRNO_FAULT,
    })
}

/// The `(pointer, length)` pairs of an iovec array, or `None` when the
/// array lies outside memory.
fn iovecs(mem: &[u8], ptr: u32, len: u32) -> Option<Vec<(u32, u32)>> {
    let bytes = mem.get(ptr as usize..(ptr as usize).checked_add(len as usize * 8)?)?;
    Some(
        bytes
            .chunks_exact(8)
            .map(|c| {
                (
                    u32::from_le_bytes(c[0..4].try_into().expect("4 bytes")),
                    u32::from_le_bytes(c[4..8].try_into().expect("4 bytes")),
                )
            })
            .collect(),
    )
}

fn put_u32(mem: &mut [u8], ptr: u32, value: u32) -> Option<()> {
    mem.get_mut(ptr as usize..ptr as usize + 4)?
        .copy_from_slice(&value.to_le_bytes());
    Some(())
}
