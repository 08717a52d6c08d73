//! `topology`: show a deployment, generate its Mosquitto configs, check checked-in
//! configs for drift (see [`topology::cli`]).

fn main() -> std::process::ExitCode {
    topology::cli::main_with(std::env::args_os())
}
