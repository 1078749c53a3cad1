/** GPT partition type GUIDs aios writes (src/build/image.ts) and recognises on a target (src/flash). Upper case, as sfdisk --json prints them. */
export const GPT_TYPES = {
  /** EFI System Partition. */
  esp: 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B',
  /** Discoverable Partitions Specification: root partition for x86-64 (systemd-gpt-auto-generator mounts it as /). */
  rootX86_64: '4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709',
  /** Discoverable Partitions Specification: dm-verity hash data of a root-x86-64 partition (the appliance layout). */
  rootX86_64Verity: '2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5',
  /** Discoverable Partitions Specification: /var (the appliance layout's, made by systemd-repart on first boot). */
  var: '4D21B016-B534-45C2-A9FB-5C16E091FD2D',
} as const;
