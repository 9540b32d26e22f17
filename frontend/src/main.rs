//! The `radixserve` binary.

/// mimalloc: compiling a grammar builds and drops many small regex and automaton nodes; on a sample of MaskBench
/// schemas it cut compile time by about a fifth against glibc's malloc (noisy, shared machine).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "radixserve", version, about = "An LLM serving runtime with prefix caching and structured generation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the OpenAI-compatible API (and SGLang's /generate) on HOST:PORT.
    Serve(Box<frontend::server::ServeArgs>),
    /// Generate a completion for one prompt and print it with tokens/s.
    Generate(frontend::generate::GenerateArgs),
}

fn main() {
    kernels::torch::init_process();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RADIXSERVE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => frontend::server::run(*args),
        Command::Generate(args) => frontend::generate::run(&args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
