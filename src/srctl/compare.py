"""The picture people want to see: bicubic | SR on top, the same detail zoomed in below."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from srctl import model as M
from srctl.infer import check_outputs, image_file, is_folder, open_image, save_image
from srctl.pictures import rgb
from srctl.upscale import upscale_image


def compare_picture(net: M.ESPCN, img: Image.Image, zoom: int = 3) -> Image.Image:
    """`img` upscaled by bicubic (left) and by `net` (right), a zoomed centre crop of each below."""
    img = rgb(img)
    sr = upscale_image(net, img)
    bicubic = img.resize(sr.size, Image.Resampling.BICUBIC)
    w, h = sr.size
    # a centre crop that zoomed spans the picture's width and half its height
    cw, ch = max(w // zoom, 1), max(h // (2 * zoom), 1)
    box = ((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch)
    sheet = Image.new("RGB", (2 * w, h + ch * zoom), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=max(10, h // 24))  # readable on a 4K sheet too
    for i, (part, label) in enumerate(((bicubic, "bicubic"), (sr, f"ESPCN x{net.scale}"))):
        sheet.paste(part, (i * w, 0))
        sheet.paste(
            part.crop(box).resize((cw * zoom, ch * zoom), Image.Resampling.NEAREST), (i * w, h)
        )
        draw.rectangle((i * w + box[0], box[1], i * w + box[2], box[3]), outline=(255, 0, 0))
        draw.text((i * w + 4, 4), label, fill=(255, 255, 0), font=font, stroke_width=1,
                  stroke_fill=(0, 0, 0))  # fmt: skip
    return sheet


def write_comparison(
    image: Path, output: str | Path | None, force: bool, load_net: Callable[[], M.ESPCN]
) -> tuple[Path, Image.Image]:
    """The comparison picture of `image`, written to `output` (default: <stem>_compare.png beside
    it; in `output` if that is a folder).

    The image and the output path are checked before `load_net` fetches the model."""
    img = open_image(image)
    name = f"{image.stem}_compare.png"
    if output is None or is_folder(output):
        dst = Path(output) / name if output else image.with_name(name)
    else:
        dst = image_file(output)
    check_outputs([image], [dst], force)  # the same refusals as infer
    sheet = compare_picture(load_net(), img)
    save_image(sheet, dst)
    return dst, sheet
