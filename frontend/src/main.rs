//! The `radixserve` binary.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "radixserve", version, about = "An LLM serving runtime with prefix caching and structured generation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate a completion for one prompt and print it with tokens/s.
    Generate(frontend::generate::GenerateArgs),
}

fn main() {
    kernels::torch::init_process();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Generate(args) => frontend::generate::run(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
