//! ferricorn(1): clap's sections (name, synopsis, options, subcommands),
//! plus the ones an operator opens a server's man page for and clap cannot
//! derive from the arguments: exit status, signals, environment, files and
//! see also (the order of man-pages(7)). The long form of each is a page
//! in docs/, installed in /usr/share/doc/ferricorn.

use std::io::{self, Write};

/// Sections after OPTIONS and SUBCOMMANDS, in roff.
const SECTIONS: &str = r#".SH "EXIT STATUS"
.TP
.B 0
Stopped by
.BR TERM ", " INT " or " QUIT .
.TP
.B 1
A runtime failure: a socket cannot be bound, the sockets systemd passed or
the upgrade hand\-off are unusable, a system call the master needs failed.
.TP
.B 2
Invalid configuration or usage; the message names the setting and the reason.
.TP
.B 3
The application could not be imported: importing it raised (the traceback
is logged), or a worker could not switch to
.BR \-\-user / \-\-group .
The master does not respawn workers in a loop.
.TP
.B 4
The module imported, but the application object is missing or not callable.
.PP
The packaged unit uses
.B RestartPreventExitStatus=2 3 4
so that systemd does not restart what cannot start.
.SH SIGNALS
To the master:
.TP
.B HUP
Reload: read the configuration again, start new workers with the code on
disk, and retire the old ones once the new ones serve.
.TP
.B TERM
Graceful stop: stop accepting, let requests in flight finish within
.BR \-\-graceful\-timeout ,
exit 0.
.TP
.BR INT ", " QUIT
Fast stop: workers stop at once.
.TP
.BR TTIN ", " TTOU
One worker more, one fewer (never below one), until the next
.BR HUP .
.TP
.B USR1
Reopen the log files (after a rotation).
.TP
.B USR2
Upgrade the binary. Outside systemd, as Gunicorn: a second master starts
on the same sockets (pid file
.IR PIDFILE .2);
send
.B TERM
to the old master to finish, or to the new one to go back. Under systemd
.RB ( NOTIFY_SOCKET " or " INVOCATION_ID
set), the master re\-executes the binary in place and keeps its pid.
.TP
.B WINCH
Ignored (ferricorn never daemonizes).
.PP
To a worker:
.B TERM
finishes its requests and exits,
.BR INT " and " QUIT
exit at once,
.B USR1
reopens the log files. The master replaces a worker that exits.
.SH ENVIRONMENT
.TP
.BR FERRICORN_CMD_ARGS ", " GUNICORN_CMD_ARGS
More arguments, read before those of the command line (which win).
.TP
.B WEB_CONCURRENCY
The number of workers when neither
.B \-w
nor a config file sets it.
.TP
.B PORT
Without any bind setting, listen on 0.0.0.0:$PORT instead of 127.0.0.1:8000.
.TP
.B VIRTUAL_ENV
The application's virtualenv when
.B \-\-virtualenv
is not given.
.TP
.BR LISTEN_FDS ", " LISTEN_PID ", " LISTEN_FDNAMES
Sockets passed by systemd socket activation (sd_listen_fds(3)); they replace
.B \-\-bind
unless a bind selects one with
.BR fd:// .
.TP
.BR NOTIFY_SOCKET ", " WATCHDOG_USEC ", " WATCHDOG_PID
Readiness, reload, stop, status and watchdog notifications to systemd
(sd_notify(3)).
.TP
.B JOURNAL_STREAM
When it names the standard error, the log goes to journald as structured
entries instead.
.PP
Workers and the application do not inherit the systemd variables.
.SH FILES
.TP
.I ./gunicorn.conf.py
Read at start when it exists and no
.B \-c
is given, as Gunicorn does.
.TP
.I /etc/ferricorn/NAME.toml
The settings of the packaged unit ferricorn@NAME.service (start from
.IR /etc/ferricorn/example.toml ).
.TP
.IR /usr/lib/systemd/system/ferricorn@.socket ", " ferricorn@.service
The packaged template units.
.TP
.I /usr/share/doc/ferricorn/
SIGNALS.md.gz, SYSTEMD.md.gz, DEPLOY.md.gz, TUNING.md.gz, GUNICORN.md.gz:
one page per operator concern.
.SH "SEE ALSO"
.BR ferricorn\-systemd\-units (1),
.BR ferricorn\-generate (1),
.BR systemd.socket (5),
.BR systemd.service (5),
.BR sd_notify (3),
.BR journalctl (1),
.BR gunicorn (1)
"#;

/// Write ferricorn(1) for `cmd` to `w`.
pub fn render(cmd: clap::Command, w: &mut dyn Write) -> io::Result<()> {
    let man = clap_mangen::Man::new(cmd);
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    man.render_options_section(w)?;
    man.render_subcommands_section(w)?;
    w.write_all(SECTIONS.as_bytes())?;
    man.render_version_section(w)
}
