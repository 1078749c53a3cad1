/** The network-namespace lab of the fleet tests: it lives in src/fleet/netns.ts (npm run bench:fleet uses it too). */
export { NetnsLab, tryConnect, waitForPort, type NsHost } from '../src/fleet/netns.js';
