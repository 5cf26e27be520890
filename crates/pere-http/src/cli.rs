//! What the three command-line tools share: reading the command line with
//! their common exit statuses.

use std::process::ExitCode;

/// Reads the command line of the tool `name` like `argh::from_env`, but a
/// usage error exits with status 2 (argh's own exits with 1), as every
/// other usage error of the tools does. `parse` is the tool's parser given
/// the arguments after the program name; its error is argh's early exit:
/// the text to print and whether it is a success (`--help`).
///
/// `--version` (or `-V`) alone prints the name and version.
///
/// # Errors
/// The exit code to end with: 0 after `--help` or `--version`, 2 for a
/// usage error or an argument that is not UTF-8.
pub fn command_line<T>(
    name: &str,
    parse: impl FnOnce(&[&str]) -> Result<T, (String, bool)>,
) -> Result<T, ExitCode> {
    let mut strings = Vec::new();
    for arg in std::env::args_os().skip(1) {
        match arg.into_string() {
            Ok(s) => strings.push(s),
            Err(arg) => {
                eprintln!("{name}: argument {arg:?} is not UTF-8");
                return Err(ExitCode::from(2));
            }
        }
    }
    let rest: Vec<&str> = strings.iter().map(String::as_str).collect();
    if let ["--version" | "-V"] = rest.as_slice() {
        // Before argh, which knows no version and wants the positionals.
        println!("{name} {}", env!("CARGO_PKG_VERSION"));
        return Err(ExitCode::SUCCESS);
    }
    match parse(&rest) {
        Ok(args) => Ok(args),
        Err((output, true)) => {
            println!("{output}");
            Err(ExitCode::SUCCESS)
        }
        Err((output, false)) => {
            // `pere-pub orders --data x` took `orders` for the server: say
            // which comes first rather than only that a channel is missing.
            let hint = if output.contains("positional arguments not provided")
                && output.contains("channel")
            {
                format!(
                    "\n{name} takes the server first, then the channel: {name} 127.0.0.1:4567 CHANNEL …"
                )
            } else {
                String::new()
            };
            eprintln!("{output}{hint}\nRun {name} --help for more information.");
            Err(ExitCode::from(2))
        }
    }
}
