import type { SoakReport } from './soak.mjs';
export function renderMarkdown(report: SoakReport): string;
export function goals(report: SoakReport): { goal: string; ok: boolean; got: string }[];
