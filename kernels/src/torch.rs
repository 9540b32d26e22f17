//! Process-level libtorch set-up: devices, dtypes, threads, and making CUDA available.
//!
//! The linker drops `libtorch_cuda.so` from our binaries (it is linked `--as-needed` and we reference none of
//! its symbols), and without it libtorch reports no CUDA device. [`init_cuda`] loads it at start when the
//! libtorch we were built against has it, which registers the CUDA backend.

use std::ffi::CString;

use tch::{Device, Kind};

use crate::error::{Error, Result};

/// Parses `cpu`, `cuda`, `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        _ => match s.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(i) => Ok(Device::Cuda(i)),
            None => Err(Error::invalid(format!("device {s:?} (expected cpu, cuda or cuda:N)"))),
        },
    }
}

/// Parses `f32`, `f16`, `bf16` (and their long names).
pub fn parse_kind(s: &str) -> Result<Kind> {
    match s {
        "f32" | "float32" | "float" => Ok(Kind::Float),
        "f16" | "float16" | "half" => Ok(Kind::Half),
        "bf16" | "bfloat16" => Ok(Kind::BFloat16),
        _ => Err(Error::invalid(format!("dtype {s:?} (expected f32, f16 or bf16)"))),
    }
}

/// The sensible default precision for a device: f32 on CPU (no bf16 hardware), bf16 on CUDA.
pub fn default_kind(device: Device) -> Kind {
    match device {
        Device::Cpu => Kind::Float,
        _ => Kind::BFloat16,
    }
}

/// Loads libtorch's CUDA library if the libtorch we link has one. Returns whether CUDA is usable.
pub fn init_cuda() -> bool {
    let dir = option_env!("TORCH_LIB_DIR");
    let candidates: Vec<String> = dir
        .map(|d| format!("{d}/libtorch_cuda.so"))
        .into_iter()
        .filter(|p| std::path::Path::new(p).exists())
        .chain(std::iter::once("libtorch_cuda.so".to_string()))
        .collect();
    for path in candidates {
        let Ok(c) = CString::new(path) else { continue };
        // SAFETY: dlopen with a valid NUL-terminated path; the handle is deliberately leaked so the library
        // stays loaded for the life of the process (its static initialisers register the CUDA backend).
        let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        if !handle.is_null() {
            break;
        }
    }
    tch::Cuda::is_available()
}

/// Checks a device is usable before loading a model onto it.
pub fn check_device(device: Device) -> Result<()> {
    if let Device::Cuda(i) = device {
        if !init_cuda() {
            return Err(Error::unsupported("CUDA device requested but libtorch has no usable CUDA".to_string()));
        }
        let n = tch::Cuda::device_count();
        if i as i64 >= n {
            return Err(Error::invalid(format!("cuda:{i} requested but {n} device(s) present")));
        }
    }
    Ok(())
}

/// Process set-up to call first thing in `main`, before any libtorch call.
///
/// libtorch's OpenMP (libgomp) threads spin for a long while after every parallel region by default (300,000
/// iterations); in a decode step that alternates libtorch ops with our own thread pool ([`crate::cpu_gemm`]) the
/// spinning threads steal the cores the pool needs. Sleeping at once (`OMP_WAIT_POLICY=PASSIVE`, what this did
/// before) pays a wake-up per op instead, which a BERT encoder's many small back-to-back ops feel: 19.2 against
/// 12.7 ms per 128-token input (`cargo run --release -p kernels --example embed_speed`). A short spin,
/// `GOMP_SPINCOUNT=10000`, gives the encoder 13.4 ms and the decoder the same speed as passive (bench-model side by
/// side, two rounds: decode b1 26.8/27.9 against 28.1/27.3 tok/s, b32 309/313 against 304/308, prefill
/// 1152/1227 against 1096/1067). libgomp reads it when it is loaded, before `main` runs, so when neither variable
/// is set we set it and re-execute the binary (same arguments) once; values already in the environment are
/// respected. If the re-exec fails we carry on: it costs speed, not function.
///
/// It also keeps glibc's allocator from handing every step's large buffers (activations, quantized rows, the
/// attention's keys) back to the kernel and faulting them in again on the next step: by default a freed chunk
/// above the adaptive mmap threshold is unmapped, and free memory above 128 KiB at a heap's top is trimmed, so
/// a prompt's buffers are zeroed page by page each time. That cost 10-20% of a 512-token prefill on this 2-core
/// VM, in some runs and not others (the adaptive threshold depends on the order of earlier frees): SmolLM2
/// `quantized` 744-952 tok/s run to run, 907-962 with the fixed thresholds below; f32 1046-1252 against
/// 1212-1265 (the best of six 512-token prompts per process, processes interleaved). Fixed thresholds (32 MiB mmap, glibc's largest; 256
/// MiB trim) keep those buffers in the heap; what a process holds beyond its live data is bounded by the trim
/// threshold per arena. Set only where the environment does not tune malloc itself.
pub fn init_process() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let tuned = std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc."))
            || std::env::vars_os().any(|(k, _)| k.to_string_lossy().starts_with("MALLOC_"));
        if !tuned {
            // SAFETY: mallopt only changes the allocator's thresholds; glibc serialises it with allocation.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
            }
        }
    }
    #[cfg(unix)]
    if std::env::var_os("OMP_WAIT_POLICY").is_none() && std::env::var_os("GOMP_SPINCOUNT").is_none() {
        use std::os::unix::process::CommandExt;
        if let Ok(exe) = std::env::current_exe() {
            let err =
                std::process::Command::new(exe).args(std::env::args_os().skip(1)).env("GOMP_SPINCOUNT", "10000").exec();
            eprintln!("warning: could not re-execute with GOMP_SPINCOUNT=10000 ({err}); continuing");
        }
    }
}

/// Sets libtorch's intra-op thread count (0 = leave libtorch's default, one per core) *for the calling thread*:
/// with libtorch's OpenMP backend the count is a per-thread setting, so a model runs with it only on the thread
/// that set it. Models take theirs in [`crate::LoadOptions::threads`] and set it on whatever thread runs them.
pub fn set_threads(n: usize) {
    if n > 0 {
        tch::set_num_threads(n as i32);
    }
}

/// The calling thread's libtorch thread count set to `n` (0: one per core) if it is not already.
pub(crate) fn ensure_threads(n: usize) {
    let want = if n == 0 { std::thread::available_parallelism().map_or(1, |c| c.get()) } else { n };
    if tch::get_num_threads() != want as i32 {
        tch::set_num_threads(want as i32);
    }
}

/// Holds the calling thread's libtorch thread count at `n` until dropped, then puts the old one back.
///
/// Loading runs on one thread: every thread that runs a libtorch parallel region keeps its own team of OpenMP
/// threads for the life of the process, and libgomp cuts the spin of every thread to almost nothing once it
/// manages more threads than there are cores. A loader's idle team would do that to the engine that runs the
/// model on another thread (measured: an all-MiniLM-L6-v2 step of one 128-token input, 12 ms alone, took 20 ms in
/// a server whose loader had its own team).
pub(crate) struct Threads(i32);

impl Threads {
    pub(crate) fn hold(n: i32) -> Self {
        let before = tch::get_num_threads();
        tch::set_num_threads(n);
        Self(before)
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        tch::set_num_threads(self.0);
    }
}
