/* Energy web server — draws the charts a page declares: an element [data-chart="<id>"] and a
 * <script type="application/json" id="<id>"> holding its data, prepared by the server:
 *   {type: "bar" | "pie", categories: [...], unit: "kWh", series: [{name, values, color?, stack?, kind?}],
 *    slices: [{name, value, color, label}] (pie)}
 * Values are already in the unit shown; null = no data (a gap, never a zero). Numbers in tooltips and
 * axes use the page language (Intl). Loaded only by pages that have charts, after ECharts.
 */
(function () {
  "use strict";
  const lang = document.documentElement.lang || "en";
  const number = new Intl.NumberFormat(lang, { maximumFractionDigits: 3 });
  const charts = new Map();

  function fmt(value, unit) {
    if (value === null || value === undefined) return "–";
    return number.format(value) + (unit ? " " + unit : "");
  }

  function option(spec) {
    if (spec.type === "pie") {
      const small = window.innerWidth < 600;
      return {
        animation: false,
        tooltip: { trigger: "item", formatter: function (p) { return p.name + ": " + p.data.label + " (" + number.format(p.percent) + " %)"; } },
        legend: { bottom: 0 },
        series: [{
          type: "pie", radius: small ? ["30%", "62%"] : ["35%", "68%"], center: ["50%", "45%"],
          label: {
            position: small ? "inside" : "outside", fontSize: small ? 11 : 12,
            formatter: function (p) { return number.format(p.percent) + " %"; },
          },
          data: spec.slices.map(function (s) { return { name: s.name, value: s.value, label: s.label, itemStyle: { color: s.color } }; }),
        }],
      };
    }
    const narrow = window.innerWidth < 600;
    return {
      animation: false,
      grid: { left: 8, right: 8, top: 36, bottom: 8, containLabel: true },
      legend: { top: 0, type: "scroll" },
      tooltip: {
        trigger: "axis", confine: true,
        valueFormatter: function (v) { return fmt(v, spec.unit); },
      },
      xAxis: { type: "category", data: spec.categories, axisLabel: { hideOverlap: true, fontSize: narrow ? 10 : 12 } },
      yAxis: { type: "value", axisLabel: { formatter: function (v) { return number.format(v); } } },
      series: spec.series.map(function (s) {
        return {
          name: s.name, type: s.kind || "bar", stack: s.stack || undefined, data: s.values,
          itemStyle: s.color ? { color: s.color } : undefined,
          barMaxWidth: 28, barGap: "10%", emphasis: { focus: "series" },
          connectNulls: false, showSymbol: true, symbolSize: 4,
        };
      }),
    };
  }

  function draw(root) {
    (root || document).querySelectorAll("[data-chart]").forEach(function (el) {
      const source = document.getElementById(el.getAttribute("data-chart"));
      if (!source || typeof echarts === "undefined") return;
      let spec;
      try { spec = JSON.parse(source.textContent); } catch (e) { return; }
      const old = echarts.getInstanceByDom(el);
      if (old) old.dispose();
      const chart = echarts.init(el, null, { renderer: "canvas" });
      chart.setOption(option(spec));
      el.setAttribute("data-drawn", "true");
      charts.set(el, chart);
    });
  }

  window.addEventListener("resize", function () {
    charts.forEach(function (chart, el) {
      if (!el.isConnected) { chart.dispose(); charts.delete(el); } else { chart.resize(); }
    });
  });
  document.addEventListener("htmx:afterSettle", function (event) { draw(event.target); });
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () { draw(document); });
  } else {
    draw(document);
  }
})();
