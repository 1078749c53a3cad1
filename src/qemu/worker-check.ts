/**
 * qemu-test's check of an RPC worker image (fleet.role = "worker", docs/fleets.md): through QEMU's
 * port forwarding, the guest sees the host's connection come from 10.0.2.2 (user-mode networking's
 * host address). When the image's fleet.heads admit that address, ggml-rpc-server must take the
 * connection; when they do not, its firewall must refuse it. Either way it is the real firewall and
 * the real server in the guest that answer.
 *
 * The forwarding accepts on the host side at once and then connects to the guest: a guest that
 * refuses (the firewall's TCP reset, or nothing listening) makes it close the host's socket at once.
 * A connection ggml-rpc-server took stays open, waiting for the client's HELLO; one byte that is not
 * HELLO (command 14, "must be always 14" in ggml-rpc.cpp) makes the server close it, which tells it
 * apart from something else that keeps connections open.
 */
import { connect } from 'node:net';
import { inCidr } from '../util/net.js';

/** The address the guest sees the host's connections come from (QEMU user-mode networking). */
export const QEMU_HOST_ADDRESS = '10.0.2.2';

/** Whether fleet.heads (IPv4 addresses and prefixes) admit `addr`. */
export function headsAdmit(heads: string[], addr: string): boolean {
  return heads.some((h) => inCidr(addr, h));
}

/** What happened to one connection through the forwarding: "served" (held open, then closed by the server on a byte that is not HELLO), "refused" (closed at once), or what else. */
export function probeForwardedWorker(address: string, o: { holdMs?: number; closeMs?: number } = {}): Promise<{ outcome: 'served' | 'refused' | 'held' | 'error'; detail: string }> {
  const [host, port] = [address.slice(0, address.lastIndexOf(':')), Number(address.slice(address.lastIndexOf(':') + 1))];
  const holdMs = o.holdMs ?? 3000;
  const closeMs = o.closeMs ?? 10_000;
  return new Promise((resolve) => {
    const s = connect({ host, port });
    let phase: 'connecting' | 'holding' | 'poked' = 'connecting';
    let timer: NodeJS.Timeout | undefined;
    const finish = (r: { outcome: 'served' | 'refused' | 'held' | 'error'; detail: string }) => {
      if (timer) clearTimeout(timer);
      s.removeAllListeners();
      s.on('error', () => {});
      s.destroy();
      resolve(r);
    };
    s.once('connect', () => {
      phase = 'holding';
      timer = setTimeout(() => {
        phase = 'poked';
        s.write(Buffer.from([0]));
        timer = setTimeout(() => finish({ outcome: 'held', detail: `the connection stayed open ${holdMs / 1000} s, but a byte that is not HELLO did not make the server close it within ${closeMs / 1000} s: not ggml-rpc-server?` }), closeMs);
      }, holdMs);
    });
    const closed = () => {
      if (phase === 'poked') finish({ outcome: 'served', detail: `ggml-rpc-server took the connection (open ${holdMs / 1000} s, then closed on a byte that is not HELLO)` });
      else finish({ outcome: 'refused', detail: phase === 'connecting' ? 'the forwarding refused the connection' : 'the guest refused the connection (the forwarding closed it at once)' });
    };
    s.once('end', closed);
    s.once('close', closed);
    s.once('error', (e: NodeJS.ErrnoException) => (phase === 'poked' && e.code === 'ECONNRESET' ? closed() : finish({ outcome: phase === 'connecting' ? 'refused' : 'error', detail: e.code ?? e.message })));
  });
}

/** The check: the host's connection is served when fleet.heads admit 10.0.2.2, refused when they do not. */
export async function workerCheck(address: string, fleet: { listen: string; heads: string[] }, o: { holdMs?: number } = {}): Promise<{ ok: boolean; address: string; detail: string }> {
  const admitted = headsAdmit(fleet.heads, QEMU_HOST_ADDRESS);
  const r = await probeForwardedWorker(address, o);
  const want = admitted ? 'served' : 'refused';
  const who = `a connection from the host (${QEMU_HOST_ADDRESS}, ${admitted ? 'a head in fleet.heads' : 'not in fleet.heads'}) to ${fleet.listen}`;
  return { ok: r.outcome === want, address, detail: `${who}: ${r.detail}${r.outcome === want ? '' : ` (expected ${want === 'served' ? 'ggml-rpc-server to take it' : 'the firewall to refuse it'})`}` };
}
