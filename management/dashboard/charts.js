// A small time-series line chart drawn on a <canvas> (no library).
const COLORS = ['#2f6fde', '#1f7a5c', '#d9822b', '#8e44ad', '#c0392b'];

function swatch(h, color) {
  const el = h('i');
  el.style.background = color; // CSSOM, allowed by the page's CSP (no inline style attributes)
  return el;
}

export class LineChart {
  constructor(canvas, seriesNames, { points = 60 } = {}) {
    this.canvas = canvas;
    this.names = seriesNames;
    this.points = points;
    this.data = seriesNames.map(() => []);
    this.times = []; // when each sample was taken (ms since the epoch): the time axis
  }

  push(values, at = Date.now()) {
    values.forEach((v, i) => {
      const s = this.data[i];
      s.push(v);
      if (s.length > this.points) s.shift();
    });
    this.times.push(at);
    if (this.times.length > this.points) this.times.shift();
    this.draw();
  }

  legend(h) {
    return h('div', { class: 'legend' }, this.names.map((n, i) =>
      h('span', {}, swatch(h, COLORS[i % COLORS.length]), n)));
  }

  draw() {
    const c = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const w = c.clientWidth || 400;
    const hgt = c.clientHeight || 200;
    c.width = w * ratio;
    c.height = hgt * ratio;
    const g = c.getContext('2d');
    g.scale(ratio, ratio);
    g.clearRect(0, 0, w, hgt);
    const left = 44, right = 8, top = 8, bottom = 22;
    const pw = w - left - right, ph = hgt - top - bottom;
    const all = this.data.flat();
    let max = Math.max(1, ...all);
    const mag = 10 ** Math.floor(Math.log10(max));
    max = Math.ceil(max / mag) * mag;
    g.font = '11px system-ui, sans-serif';
    g.fillStyle = '#6b7785';
    g.strokeStyle = '#e3e8ee';
    g.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const y = top + ph - (ph * i) / 4;
      g.beginPath(); g.moveTo(left, y); g.lineTo(left + pw, y); g.stroke();
      const label = (max * i) / 4;
      g.fillText(label >= 100 ? label.toFixed(0) : String(+label.toFixed(2)), 4, y + 4);
    }
    // The time axis: the clock time of up to 5 samples, oldest on the left.
    const n = this.times.length;
    const xOf = (j) => left + (pw * (j + this.points - n)) / (this.points - 1);
    g.strokeStyle = '#c5ced8';
    g.beginPath(); g.moveTo(left, top + ph); g.lineTo(left + pw, top + ph); g.stroke();
    const ticks = Math.min(5, n);
    let lastRight = -Infinity;
    for (let k = 0; k < ticks; k++) {
      const j = ticks === 1 ? n - 1 : Math.round((k * (n - 1)) / (ticks - 1));
      const label = new Date(this.times[j]).toLocaleTimeString([], { hour12: false });
      const x = xOf(j);
      const width = g.measureText(label).width;
      const lx = Math.min(Math.max(x - width / 2, left), left + pw - width);
      if (lx < lastRight + 6) continue; // no overlapping labels while the chart fills up
      g.beginPath(); g.moveTo(x, top + ph); g.lineTo(x, top + ph + 4); g.stroke();
      g.fillText(label, lx, hgt - 6);
      lastRight = lx + width;
    }
    this.data.forEach((s, i) => {
      if (!s.length) return;
      g.strokeStyle = COLORS[i % COLORS.length];
      g.lineWidth = i === 0 ? 2.5 : 1.5;
      g.setLineDash(i === 0 ? [] : [6, 3]); // equal series stay visible on top of each other
      g.beginPath();
      s.forEach((v, j) => {
        const x = left + (pw * (j + this.points - s.length)) / (this.points - 1);
        const y = top + ph - (ph * v) / max;
        if (j === 0) g.moveTo(x, y); else g.lineTo(x, y);
      });
      g.stroke();
    });
  }
}
