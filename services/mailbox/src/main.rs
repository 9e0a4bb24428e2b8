//! `threatmail-mailbox`: the mailbox service as its own process.

fn main() -> std::process::ExitCode {
    threatmail_runtime::service_main("mailbox", threatmail_mailbox::run)
}
