//! `agentkeys completions`: a shell completion script for the whole command line.

use crate::error::CliResult;

// The flags of `agentkeys completions` (no doc comment: see `crate::cli::Command`).
#[allow(missing_docs)]
#[derive(clap::Args)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell.
    shell: clap_complete::Shell,
}

/// Prints the completion script for `cli`, the whole command line, on stdout.
pub fn completions(args: CompletionsArgs, mut cli: clap::Command) -> CliResult {
    clap_complete::generate(args.shell, &mut cli, "agentkeys", &mut std::io::stdout());
    Ok(())
}
