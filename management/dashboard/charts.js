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
  }

  push(values) {
    values.forEach((v, i) => {
      const s = this.data[i];
      s.push(v);
      if (s.length > this.points) s.shift();
    });
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
    const left = 44, right = 8, top = 8, bottom = 18;
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
    g.fillText(`last ${this.points} samples`, left, hgt - 4);
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
