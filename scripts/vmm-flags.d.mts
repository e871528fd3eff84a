/** The V8 flags of the #! line of the bin/vmm at `path` (scripts/vmm-flags.mjs). */
export declare const binVmmV8Flags: (path: string) => Array<string>
