//! `prefork-ctl`: see the library ([`prefork_ctl::run`]) for the commands.

fn main() {
    let code = prefork_ctl::run(
        std::env::args_os(),
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    );
    std::process::exit(i32::from(code))
}
