"""PASCAL VOC annotation files for tests (imported by the test modules that build VOC folders)."""

import xml.etree.ElementTree as ET


def write_voc_xml(path, objects, filename=None):
    """Write a VOC annotation: `objects` = [(class name, (xmin, ymin, xmax, ymax), difficult 0/1)]."""
    ann = ET.Element("annotation")
    if filename:
        ET.SubElement(ann, "filename").text = filename
    for name, box, difficult in objects:
        o = ET.SubElement(ann, "object")
        ET.SubElement(o, "name").text = name
        ET.SubElement(o, "difficult").text = str(difficult)
        bb = ET.SubElement(o, "bndbox")
        for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True):
            ET.SubElement(bb, k).text = str(v)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(ann).write(path)
