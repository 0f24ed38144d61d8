"""Title, visible text and links of an HTML page (stdlib `html.parser`, no dependencies)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urldefrag, urljoin, urlsplit

_SKIP = {"script", "style", "noscript", "template", "head"}
_BLOCK = {"p", "div", "li", "h1", "h2", "h3", "h4", "h5", "h6", "br", "tr", "section", "article"}
_SPACES = re.compile(r"[ \t\r\f\v]+")


@dataclass
class Page:
    """What a page says: its title, its readable text and the http(s) links it holds."""

    url: str
    title: str = ""
    text: str = ""
    links: list[str] = field(default_factory=list)


class _Extractor(HTMLParser):
    def __init__(self, base_url: str) -> None:
        super().__init__(convert_charrefs=True)
        self.base_url = base_url
        self.title: list[str] = []
        self.text: list[str] = []
        self.links: list[str] = []
        self._skipping = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in _SKIP:
            self._skipping += 1
        elif tag in _BLOCK:
            self.text.append("\n")
        if tag == "a":
            href = dict(attrs).get("href")
            if href:
                self._add_link(href)

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in _SKIP and self._skipping:
            self._skipping -= 1
        elif tag in _BLOCK:
            self.text.append("\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title.append(data)
        elif not self._skipping:
            self.text.append(data)

    def _add_link(self, href: str) -> None:
        url, _ = urldefrag(urljoin(self.base_url, href.strip()))
        if urlsplit(url).scheme in ("http", "https") and url not in self.links:
            self.links.append(url)


def extract(url: str, html: str) -> Page:
    """Parse `html` fetched from `url`; links are absolute and deduplicated."""
    parser = _Extractor(url)
    parser.feed(html)
    parser.close()
    lines = (_SPACES.sub(" ", line).strip() for line in "".join(parser.text).splitlines())
    text = "\n".join(line for line in lines if line)
    title = _SPACES.sub(" ", "".join(parser.title)).strip()
    return Page(url=url, title=title or url, text=text, links=parser.links)
