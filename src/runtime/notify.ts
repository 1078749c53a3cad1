/** Readiness for systemd (Type=notify), from the daemon's own PID when the unit allows only that. */
import { execFile } from 'node:child_process';
import { writeSync } from 'node:fs';

/**
 * Tells systemd we are ready (Type=notify). Node has no unix datagram sockets: in the image,
 * /usr/libexec/aios/notify-exec hands us one connected to $NOTIFY_SOCKET ($AIOS_NOTIFY_FD), so the
 * message comes from the main PID (the unit has NotifyAccess=main: no child can send one); without
 * it, a systemd-notify child does it (that needs NotifyAccess=all).
 */
export function notifyReady(env: NodeJS.ProcessEnv = process.env): Promise<void> {
  const fd = Number(env.AIOS_NOTIFY_FD);
  if (env.AIOS_NOTIFY_FD && Number.isInteger(fd)) {
    try {
      writeSync(fd, 'READY=1\nSTATUS=serving');
      return Promise.resolve();
    } catch {
      // fall through to systemd-notify
    }
  }
  if (!env.NOTIFY_SOCKET) return Promise.resolve();
  return new Promise((resolve) => execFile('systemd-notify', ['--ready', `--status=serving`], () => resolve()));
}
