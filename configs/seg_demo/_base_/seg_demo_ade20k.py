# Built-in ADE20K-layout demo data (python tools/make_seg_demo.py --layout ade20k):
# indoor scenes of varying size up to 224x160 (JPEG), annotations 0..150 with 0 = other;
# read by mmseg's ADE20KDataset (reduce_zero_label=True: 0 -> 255 ignored, k -> k-1).
# seg_demo_cityscapes.py with another data set: class, folders, label decoding, scale.
_base_ = './seg_demo_cityscapes.py'
dataset_type = 'ADE20KDataset'
data_root = 'data/seg_demo/ade20k/'
crop_size = (128, 128)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(512, 144), ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(512, 144), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')
]
train_dataloader = dict(dataset=dict(
    type=dataset_type, data_root=data_root, pipeline=train_pipeline,
    data_prefix=dict(img_path='images/training', seg_map_path='annotations/training')))
val_dataloader = dict(dataset=dict(
    type=dataset_type, data_root=data_root, pipeline=test_pipeline,
    data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation')))
test_dataloader = val_dataloader
